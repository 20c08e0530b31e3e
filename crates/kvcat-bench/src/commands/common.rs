//! Options shared by several subcommands: model path, device, dtype.

use anyhow::Context;
use clap::Args;
use kvcat_core::device::{parse_dtype, DeviceChoice};
use kvcat_core::Model;
use std::path::PathBuf;

/// Where the model comes from and where it runs.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// An HF checkpoint directory (config.json + safetensors) or a .gguf file.
    #[arg(long)]
    pub model: PathBuf,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// auto (f32 on CPU, bf16 on CUDA), f32, bf16 or f16.
    #[arg(long, default_value = "auto")]
    pub dtype: String,
}

impl ModelArgs {
    /// Loads the model on the chosen device and dtype.
    pub fn load(&self) -> anyhow::Result<Model> {
        let device = self.device.parse::<DeviceChoice>()?.resolve()?;
        let kind = parse_dtype(&self.dtype)?.unwrap_or(kvcat_core::device::default_dtype(device));
        Model::load(&self.model, device, kind)
            .with_context(|| format!("loading model {}", self.model.display()))
    }
}

/// An ids file: `{"context": [ids…], "continuation": [ids…], "question": [ids…]}`
/// (`continuation` and `question` optional). `question` is shown to query-aware compressors
/// by `kvcat compress` and is not part of any sequence that is run.
#[derive(serde::Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct IdsFile {
    pub context: Vec<i64>,
    #[serde(default)]
    pub continuation: Vec<i64>,
    #[serde(default)]
    pub question: Vec<i64>,
}

impl IdsFile {
    pub fn read(path: &std::path::Path) -> anyhow::Result<IdsFile> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let ids: IdsFile = serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: expected {{\"context\": [ids…], \"continuation\": [ids…]}}",
                path.display()
            )
        })?;
        anyhow::ensure!(
            !ids.context.is_empty(),
            "{}: field `context` is empty",
            path.display()
        );
        Ok(ids)
    }

    /// Checks every id against a vocabulary of `vocab` entries; an error names the file, the
    /// field and the index within it (`ids.json: field `continuation`[3]: …`).
    pub fn check_vocab(&self, vocab: i64, path: &std::path::Path) -> anyhow::Result<()> {
        for (field, ids) in [
            ("context", &self.context),
            ("continuation", &self.continuation),
            ("question", &self.question),
        ] {
            if let Some((i, id)) = ids
                .iter()
                .enumerate()
                .find(|(_, id)| **id < 0 || **id >= vocab)
            {
                anyhow::bail!(
                    "{}: field `{field}`[{i}]: token id {id} is outside the vocabulary (allowed: \
                     0 to {}, the model's vocab_size {vocab} minus one)",
                    path.display(),
                    vocab - 1
                );
            }
        }
        Ok(())
    }
}

/// Writes named tensors to a safetensors file, creating its parent directory; errors name the
/// file.
pub fn write_safetensors(
    path: &std::path::Path,
    tensors: &[(&str, tch::Tensor)],
) -> anyhow::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating output directory {}", parent.display()))?;
    }
    tch::Tensor::write_safetensors(tensors, path)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))
}
