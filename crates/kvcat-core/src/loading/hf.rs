//! HF checkpoints: a directory with `config.json` and `model.safetensors`, or shards listed in
//! `model.safetensors.index.json`. Variables are declared first, then loaded; missing and
//! unused tensor names are reported.

use super::Model;
use crate::config::LlamaConfig;
use crate::model::Llama;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use tch::{nn, Device, Kind, Tensor};

/// The safetensors files of a checkpoint directory.
fn shard_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.exists() {
        return Err(Error::io(
            &single,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no model.safetensors or model.safetensors.index.json in the checkpoint directory",
            ),
        ));
    }
    let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Format {
        file: index.display().to_string(),
        reason: format!("not valid JSON: {e}"),
    })?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::Config {
            file: index.display().to_string(),
            field: "weight_map".into(),
            reason: "missing or not an object".into(),
        })?;
    let files: BTreeSet<String> = map
        .values()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

/// Reads every tensor of `files` (on CPU), keyed by name, with the file it came from.
fn read_tensors(files: &[PathBuf]) -> Result<HashMap<String, (Tensor, String)>> {
    let mut out = HashMap::new();
    for f in files {
        for (name, t) in read_safetensors_file(f)? {
            out.insert(name, (t, f.display().to_string()));
        }
    }
    Ok(out)
}

/// Reads one safetensors file. A missing file is an [`Error::Io`]; a corrupt header or
/// truncated data an [`Error::Format`]; an element type libtorch lacks an
/// [`Error::Unsupported`] naming the tensor.
pub fn read_safetensors_file(path: &Path) -> Result<Vec<(String, Tensor)>> {
    use safetensors::Dtype;
    let file = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| Error::Format {
        file: file.clone(),
        reason: format!("not a valid safetensors file: {e}"),
    })?;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let kind = match view.dtype() {
            Dtype::F32 => Kind::Float,
            Dtype::F16 => Kind::Half,
            Dtype::BF16 => Kind::BFloat16,
            Dtype::F64 => Kind::Double,
            Dtype::I64 => Kind::Int64,
            Dtype::I32 => Kind::Int,
            Dtype::I16 => Kind::Int16,
            Dtype::I8 => Kind::Int8,
            Dtype::U8 => Kind::Uint8,
            Dtype::BOOL => Kind::Bool,
            other => {
                return Err(Error::Unsupported {
                    file,
                    what: format!("element type of tensor `{name}`"),
                    value: format!("{other:?}"),
                    supported: "F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL".into(),
                })
            }
        };
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        out.push((name, Tensor::f_from_data_size(view.data(), &shape, kind)?));
    }
    Ok(out)
}

/// Copies named tensors into the declared variables of `vs`, checking shapes.
/// Returns the names present in the checkpoint but unused by the model.
pub fn fill_vars(
    vs: &nn::VarStore,
    mut tensors: HashMap<String, (Tensor, String)>,
    file_for_missing: &str,
    optional_unused: &[&str],
) -> Result<Vec<String>> {
    let vars = vs.variables();
    let mut missing = Vec::new();
    let mut names: Vec<_> = vars.keys().cloned().collect();
    names.sort();
    for name in names {
        let var = &vars[&name];
        match tensors.remove(&name) {
            None => missing.push(name),
            Some((t, file)) => {
                if t.size() != var.size() {
                    return Err(Error::Shape {
                        file,
                        tensor: name,
                        expected: var.size(),
                        got: t.size(),
                    });
                }
                tch::no_grad(|| {
                    let mut v = var.shallow_clone();
                    v.f_copy_(&t)
                })?;
            }
        }
    }
    if !missing.is_empty() {
        return Err(Error::MissingTensors {
            file: file_for_missing.to_string(),
            names: missing,
        });
    }
    let mut unused: Vec<String> = tensors
        .into_keys()
        .filter(|n| !optional_unused.contains(&n.as_str()) && !n.ends_with("rotary_emb.inv_freq"))
        .collect();
    unused.sort();
    Ok(unused)
}

/// Loads an HF Llama checkpoint directory in f32 on `device`.
pub fn load_model(dir: &Path, device: Device) -> Result<Model> {
    let cfg_path = dir.join("config.json");
    if !cfg_path.exists() {
        return Err(Error::io(
            &cfg_path,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "not found in the checkpoint directory",
            ),
        ));
    }
    let (cfg, mut notes) = LlamaConfig::from_hf_json_noted(&cfg_path)?;
    let files = shard_files(dir)?;
    let tensors = read_tensors(&files)?;
    if cfg.tie_word_embeddings {
        notes.extend(untied_head_note(&tensors, &cfg_path));
    }
    let vs = nn::VarStore::new(device);
    let net = Llama::for_loading(&vs.root(), &cfg);
    let optional: &[&str] = if cfg.tie_word_embeddings {
        &["lm_head.weight"]
    } else {
        &[]
    };
    // Missing tensors are reported against the file that lists the names: the single
    // safetensors file, or the shard index.
    let listing = if files.len() == 1 && files[0].ends_with("model.safetensors") {
        files[0].clone()
    } else {
        dir.join("model.safetensors.index.json")
    };
    let unused = fill_vars(&vs, tensors, &listing.display().to_string(), optional)?;
    if !unused.is_empty() {
        notes.push(format!(
            "{}: unused tensors in checkpoint: {}",
            dir.display(),
            unused.join(", ")
        ));
    }
    for n in &notes {
        super::warn_once(n);
    }
    let tok_path = dir.join("tokenizer.json");
    let tokenizer = if tok_path.exists() {
        Some(Tokenizer::from_file(&tok_path)?)
    } else {
        None
    };
    Ok(Model {
        vs,
        net,
        tokenizer,
        source: dir.display().to_string(),
        notes,
    })
}

/// With `tie_word_embeddings = true` the model projects with `embed_tokens` and has no
/// `lm_head`; a checkpoint that still holds an `lm_head.weight` *different* from the
/// embeddings would give other logits in a loader that used it, so it is named (an identical
/// copy, as some exporters write, is silently fine).
fn untied_head_note(tensors: &HashMap<String, (Tensor, String)>, cfg: &Path) -> Option<String> {
    let (head, file) = tensors.get("lm_head.weight")?;
    let same = tensors
        .get("model.embed_tokens.weight")
        .is_some_and(|(e, _)| e.size() == head.size() && e.equal(head));
    (!same).then(|| {
        format!(
            "{}: `tie_word_embeddings` is true, so `lm_head.weight` in {file} (which differs from \
             the embeddings) is ignored; set it to false to use that head",
            cfg.display()
        )
    })
}
