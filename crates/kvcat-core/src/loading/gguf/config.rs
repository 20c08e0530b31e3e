//! [`LlamaConfig`] from the `llama.*` and `tokenizer.ggml.*` metadata of a GGUF file.

use super::reader::{GgufFile, Value};
use crate::config::LlamaConfig;
use crate::{Error, Result};

/// The architectures kvcat loads from GGUF.
pub const SUPPORTED_ARCHITECTURES: &str = "llama";

fn field_err(g: &GgufFile, field: &str, reason: String) -> Error {
    Error::Config {
        file: g.file(),
        field: field.to_string(),
        reason,
    }
}

fn int(g: &GgufFile, key: &str) -> Result<Option<i64>> {
    match g.get(key) {
        None => Ok(None),
        Some(v) => v.as_i64().map(Some).ok_or_else(|| {
            field_err(
                g,
                key,
                format!("expected an integer, got {} {v:?}", v.type_name()),
            )
        }),
    }
}

/// A numeric field as f64. An f32 is widened through its shortest decimal form, so a stored
/// `1e-5f32` reads as `1e-5`, the value the converter was given.
fn float(g: &GgufFile, key: &str) -> Result<Option<f64>> {
    match g.get(key) {
        None => Ok(None),
        Some(Value::F32(x)) => Ok(Some(x.to_string().parse().unwrap_or(*x as f64))),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| {
            field_err(
                g,
                key,
                format!("expected a number, got {} {v:?}", v.type_name()),
            )
        }),
    }
}

fn required(g: &GgufFile, key: &str) -> Result<i64> {
    int(g, key)?.ok_or_else(|| field_err(g, key, "missing".into()))
}

/// The architecture named by `general.architecture`, checked against the supported ones.
pub fn architecture(g: &GgufFile) -> Result<String> {
    let arch = match g.get("general.architecture") {
        Some(Value::String(s)) => s.clone(),
        Some(v) => {
            return Err(field_err(
                g,
                "general.architecture",
                format!("expected a string, got {} {v:?}", v.type_name()),
            ))
        }
        None => return Err(field_err(g, "general.architecture", "missing".into())),
    };
    if arch != "llama" {
        return Err(Error::Unsupported {
            file: g.file(),
            what: "architecture (general.architecture)".into(),
            value: format!("`{arch}`"),
            supported: SUPPORTED_ARCHITECTURES.into(),
        });
    }
    Ok(arch)
}

/// Builds and validates the model config. The vocabulary size is the length of
/// `tokenizer.ggml.tokens` (else `llama.vocab_size`, else the embedding rows); embeddings are
/// tied when there is no `output.weight`. RoPE scaling, partial rotary dims and MoE are
/// rejected as unsupported rather than silently ignored.
pub fn llama_config(g: &GgufFile) -> Result<LlamaConfig> {
    let arch = architecture(g)?;
    let k = |s: &str| format!("{arch}.{s}");
    let hidden = required(g, &k("embedding_length"))?;
    let heads = required(g, &k("attention.head_count"))?;
    let kv_heads = int(g, &k("attention.head_count_kv"))?.unwrap_or(heads);
    let head_dim = head_dim(g, &arch, hidden, heads)?;
    check_plain_rope_dense(g, &arch)?;
    let vocab = vocab_size(g, &arch)?;
    let eos = eos_ids(g)?;
    let cfg = LlamaConfig {
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: required(g, &k("feed_forward_length"))?,
        num_hidden_layers: required(g, &k("block_count"))?,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        head_dim,
        rms_norm_eps: float(g, &k("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5),
        rope_theta: float(g, &k("rope.freq_base"))?.unwrap_or(10_000.0),
        max_position_embeddings: int(g, &k("context_length"))?.unwrap_or(2048),
        tie_word_embeddings: g.tensor("output.weight").is_none(),
        bos_token_id: int(g, "tokenizer.ggml.bos_token_id")?,
        eos_token_ids: eos,
    };
    cfg.validate(&g.file())?;
    Ok(cfg)
}

/// An [`Error::Unsupported`] feature of `g`.
fn unsupported(g: &GgufFile, what: &str, value: String, supported: &str) -> Error {
    Error::Unsupported {
        file: g.file(),
        what: what.to_string(),
        value,
        supported: supported.to_string(),
    }
}

/// The head dim (`attention.key_length`, else `hidden / heads`); the value head dim and the
/// rotary dims, when given, must equal it.
fn head_dim(g: &GgufFile, arch: &str, hidden: i64, heads: i64) -> Result<i64> {
    let k = |s: &str| format!("{arch}.{s}");
    let head_dim = match int(g, &k("attention.key_length"))? {
        Some(d) => d,
        None if heads > 0 => hidden / heads,
        None => 0,
    };
    if let Some(v) = int(g, &k("attention.value_length"))? {
        if v != head_dim {
            return Err(unsupported(
                g,
                &format!("{} (value head dim)", k("attention.value_length")),
                v.to_string(),
                &format!("equal to the key head dim {head_dim}"),
            ));
        }
    }
    if let Some(r) = int(g, &k("rope.dimension_count"))? {
        if r != head_dim {
            return Err(unsupported(
                g,
                &format!("{} (partial rotary)", k("rope.dimension_count")),
                r.to_string(),
                &format!("the full head dim {head_dim}"),
            ));
        }
    }
    Ok(head_dim)
}

/// No RoPE scaling, no per-frequency RoPE factors, no experts.
fn check_plain_rope_dense(g: &GgufFile, arch: &str) -> Result<()> {
    let k = |s: &str| format!("{arch}.{s}");
    if let Some(v) = g.get(&k("rope.scaling.type")) {
        let t = v.as_str().unwrap_or("?");
        if t != "none" {
            return Err(unsupported(
                g,
                &k("rope.scaling.type"),
                format!("`{t}`"),
                "none",
            ));
        }
    }
    if g.tensor("rope_freqs.weight").is_some() {
        return Err(unsupported(
            g,
            "RoPE frequency factors (tensor `rope_freqs.weight`)",
            "present".into(),
            "plain RoPE without per-frequency factors",
        ));
    }
    if let Some(e) = int(g, &k("expert_count"))? {
        if e > 0 {
            return Err(unsupported(
                g,
                &k("expert_count"),
                e.to_string(),
                "0 (dense models only)",
            ));
        }
    }
    Ok(())
}

/// The length of `tokenizer.ggml.tokens`, else `<arch>.vocab_size`, else the rows of
/// `token_embd.weight`.
fn vocab_size(g: &GgufFile, arch: &str) -> Result<i64> {
    if let Some(tokens) = g.get("tokenizer.ggml.tokens").and_then(Value::as_array) {
        return Ok(tokens.len() as i64);
    }
    if let Some(v) = int(g, &format!("{arch}.vocab_size"))? {
        return Ok(v);
    }
    g.tensor("token_embd.weight")
        .and_then(|t| t.dims.get(1).copied())
        .map(|v| v as i64)
        .ok_or_else(|| {
            field_err(
                g,
                "tokenizer.ggml.tokens",
                "missing, and no vocab_size or token_embd.weight to infer it".into(),
            )
        })
}

/// The end-of-sequence ids: `eos_token_id`, then `eot_token_id` when it differs.
fn eos_ids(g: &GgufFile) -> Result<Vec<i64>> {
    let mut eos = Vec::new();
    for key in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"] {
        if let Some(id) = int(g, key)? {
            if !eos.contains(&id) {
                eos.push(id);
            }
        }
    }
    Ok(eos)
}
