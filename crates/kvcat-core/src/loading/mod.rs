//! Loading models: HF directories (`config.json` + safetensors, sharded too) and GGUF files.

pub mod gguf;
pub mod gguf_tokenizer;
pub mod hf;

use crate::config::LlamaConfig;
use crate::model::Llama;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use tch::{nn, Device, Kind};

/// A loaded model: its variables, the network built over them, and its tokenizer if one
/// came with it. Dereferences to [`Llama`].
pub struct Model {
    pub vs: nn::VarStore,
    pub net: Llama,
    pub tokenizer: Option<Tokenizer>,
    /// Where it came from (a path, or `scratch`).
    pub source: String,
    /// What loading assumed or ignored that bears on results (a config default filled in,
    /// a tensor ignored), each already said once on stderr; result rows carry them.
    pub notes: Vec<String>,
}

/// Says `msg` on stderr as a warning, once per process however often it is called (a sweep
/// loads a model many times), and returns it for a row's `notes`.
pub fn warn_once(msg: &str) -> String {
    use std::collections::BTreeSet;
    use std::sync::Mutex;
    static SAID: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let first = SAID
        .lock()
        .map(|mut s| s.insert(msg.to_string()))
        .unwrap_or(true);
    if first {
        eprintln!("warning: {msg}");
    }
    msg.to_string()
}

impl Deref for Model {
    type Target = Llama;
    fn deref(&self) -> &Llama {
        &self.net
    }
}

impl Model {
    /// A freshly initialised model (N(0, 0.02) weights) for training from scratch.
    pub fn from_config(cfg: &LlamaConfig, device: Device, kind: Kind) -> Result<Model> {
        cfg.validate("model config")?;
        let mut vs = nn::VarStore::new(device);
        let net = Llama::new(&vs.root(), cfg);
        vs.set_kind(kind);
        Ok(Model {
            vs,
            net,
            tokenizer: None,
            source: "scratch".into(),
            notes: vec![],
        })
    }

    /// Loads an HF directory or a `.gguf` file, onto `device` in dtype `kind`.
    pub fn load(path: &Path, device: Device, kind: Kind) -> Result<Model> {
        let _span = tracing::info_span!("load", path = %path.display()).entered();
        if !path.exists() {
            return Err(Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
            ));
        }
        let is_gguf = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
        let mut model = if is_gguf {
            gguf::load_model(path, device)?
        } else if path.is_dir() {
            hf::load_model(path, device)?
        } else {
            return Err(Error::Format {
                file: path.display().to_string(),
                reason: "expected an HF checkpoint directory or a .gguf file".into(),
            });
        };
        model.vs.set_kind(kind);
        model.source = path.display().to_string();
        if path.is_dir() {
            model.net.learned = read_learned(&path.join(POLICY_WEIGHTS), device, kind)?;
        }
        Ok(model)
    }

    /// Saves as an HF directory: `config.json`, `model.safetensors`, and `tokenizer.json`
    /// when a tokenizer is attached. Files are written atomically (temp file, then rename).
    pub fn save_hf(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let cfg = serde_json::to_string_pretty(&self.net.config.to_hf_json())
            .map_err(|e| Error::invalid(e.to_string()))?;
        write_atomic(&dir.join("config.json"), cfg.as_bytes())?;
        let tmp = dir.join("model.safetensors.tmp");
        let vars: Vec<(String, tch::Tensor)> = {
            let mut v: Vec<_> = self.vs.variables().into_iter().collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        write_safetensors(&vars, &tmp)?;
        rename(&tmp, &dir.join("model.safetensors"))?;
        if let Some(tok) = &self.tokenizer {
            tok.save(&dir.join("tokenizer.json"))?;
        }
        Ok(())
    }
}

/// The file of a checkpoint directory that holds a train-time policy's learned parameters.
pub const POLICY_WEIGHTS: &str = "policy.safetensors";

/// Reads a checkpoint's learned policy tensors (floating ones cast to `kind`), or none when
/// the file does not exist.
fn read_learned(
    file: &Path,
    device: Device,
    kind: Kind,
) -> Result<std::collections::BTreeMap<String, tch::Tensor>> {
    if !file.exists() {
        return Ok(Default::default());
    }
    let tensors = tch::Tensor::read_safetensors(file).map_err(|e| Error::Format {
        file: file.display().to_string(),
        reason: format!("not a safetensors file of policy parameters: {e}"),
    })?;
    Ok(tensors
        .into_iter()
        .map(|(name, t)| {
            let t = t.to_device(device);
            let t = if t.is_floating_point() {
                t.to_kind(kind)
            } else {
                t
            };
            (name, t)
        })
        .collect())
}

/// Writes named tensors to a safetensors file. A failed write is an [`Error::Io`] naming
/// the file and the OS error (`…: No space left on device (os error 28)`): tch reports it as
/// the Debug form of its safetensors 0.3 error (`IoError(Os { code: 28, … })`), a type this
/// crate cannot name, so the OS error code is read back from that text.
pub fn write_safetensors(vars: &[(String, tch::Tensor)], path: &Path) -> Result<()> {
    tch::Tensor::write_safetensors(vars, path).map_err(|e| {
        let text = e.to_string();
        let code = text
            .split("code: ")
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|d| d.parse::<i32>().ok());
        match code {
            Some(c) => Error::io(path, std::io::Error::from_raw_os_error(c)),
            None => Error::Torch(e),
        }
    })
}

/// Writes `bytes` to `path` through a temporary file and a rename, so readers never see a
/// half-written file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp: PathBuf = {
        let mut s = path.as_os_str().to_owned();
        s.push(".tmp");
        s.into()
    };
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    rename(&tmp, path)
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(|e| Error::io(to, e))
}
