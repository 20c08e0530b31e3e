//! GGUF files (llama.cpp): F32, F16, Q8_0 and Q4_1 tensors, llama architecture.
//! (Being written: see the GGUF work item.)

use super::Model;
use crate::{Error, Result};
use std::path::Path;
use tch::Device;

/// Loads a llama-architecture GGUF file in f32 on `device`, with its tokenizer.
pub fn load_model(path: &Path, _device: Device) -> Result<Model> {
    Err(Error::Unsupported {
        file: path.display().to_string(),
        what: "format".into(),
        value: "gguf".into(),
        supported: "HF directories (GGUF loading not built yet)".into(),
    })
}
