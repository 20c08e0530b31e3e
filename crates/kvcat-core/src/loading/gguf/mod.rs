//! GGUF files (llama.cpp): the container ([`reader`]), tensor types and their decoding
//! ([`dtype`]: F32, F16, BF16, Q4_0, Q4_1, Q8_0), name mapping and the Q/K row permutation
//! ([`names`]), and the model config ([`config`]). Only the `llama` architecture loads; the
//! tokenizer is rebuilt from the metadata by [`crate::loading::gguf_tokenizer`].

pub mod config;
pub mod dtype;
pub mod names;
pub mod reader;

pub use dtype::{dequantize, GgmlType};
pub use reader::{GgufFile, TensorInfo, Value};

use super::Model;
use crate::model::Llama;
use crate::Result;
use std::collections::HashMap;
use std::path::Path;
use tch::{nn, Device, Tensor};

/// Tensors keyed by HF name, each with the file it came from (what `hf::fill_vars` takes).
pub type NamedTensors = HashMap<String, (Tensor, String)>;

/// Decodes every mapped tensor of `g` to f32 on the CPU, keyed by HF name, with the Q/K
/// permutation undone. Returns the tensors and the GGUF names that have no HF mapping.
pub fn read_tensors(g: &GgufFile, cfg: &crate::LlamaConfig) -> Result<(NamedTensors, Vec<String>)> {
    let file = g.file();
    let mut out = HashMap::new();
    let mut unmapped = Vec::new();
    for t in &g.tensors {
        let Some(name) = names::hf_name(&t.name) else {
            unmapped.push(t.name.clone());
            continue;
        };
        let bytes = g.tensor_bytes(t)?;
        let mut w = dequantize(t.ty, &bytes, &t.shape()).map_err(|e| crate::Error::Format {
            file: file.clone(),
            reason: format!("tensor `{}`: {e}", t.name),
        })?;
        if name.ends_with("self_attn.q_proj.weight") {
            w = names::unpermute_qk(&w, cfg.num_attention_heads, &file, &t.name)?;
        } else if name.ends_with("self_attn.k_proj.weight") {
            w = names::unpermute_qk(&w, cfg.num_key_value_heads, &file, &t.name)?;
        }
        out.insert(name, (w, file.clone()));
    }
    Ok((out, unmapped))
}

/// Loads a llama-architecture GGUF file in f32 on `device`, with its tokenizer.
///
/// Variables are declared by [`Llama::new`] and filled by [`super::hf::fill_vars`], which
/// checks shapes and reports missing tensors; unused and unmapped tensors are logged.
pub fn load_model(path: &Path, device: Device) -> Result<Model> {
    let g = GgufFile::open(path)?;
    let file = g.file();
    let cfg = config::llama_config(&g)?;
    let tokenizer = super::gguf_tokenizer::from_gguf(&g)?;
    let (tensors, unmapped) = read_tensors(&g, &cfg)?;
    let vs = nn::VarStore::new(device);
    let net = Llama::for_loading(&vs.root(), &cfg);
    let unused = super::hf::fill_vars(&vs, tensors, &file, &[])?;
    if !unused.is_empty() || !unmapped.is_empty() {
        tracing::warn!(
            file = %file,
            "unused tensors in GGUF: {}",
            unused.iter().chain(&unmapped).cloned().collect::<Vec<_>>().join(", ")
        );
    }
    Ok(Model {
        vs,
        net,
        tokenizer,
        source: file,
        notes: vec![],
    })
}
