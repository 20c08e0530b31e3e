//! GGUF tensor names → HF Llama names, and undoing llama.cpp's Q/K row permutation.

use crate::{Error, Result};
use tch::Tensor;

/// The HF name of a llama-architecture GGUF tensor, or `None` for a name kvcat does not map.
///
/// `token_embd` → `model.embed_tokens`, `output_norm` → `model.norm`, `output` → `lm_head`,
/// and per block `blk.N.{attn_q, attn_k, attn_v, attn_output, ffn_gate, ffn_up, ffn_down,
/// attn_norm, ffn_norm}` → `model.layers.N.{self_attn.q_proj, …, o_proj, mlp.gate_proj, …,
/// input_layernorm, post_attention_layernorm}`.
pub fn hf_name(gguf: &str) -> Option<String> {
    let top = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(t) = top {
        return Some(t.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: u32 = layer.parse().ok()?;
    let (part, suffix) = rest.split_once('.')?;
    if suffix != "weight" {
        return None;
    }
    let hf = match part {
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.weight"))
}

/// Undoes llama.cpp's row permutation of a Q or K projection `w` `[n_head·head_dim, in]`.
///
/// llama.cpp's converter reorders each head's rows from HF's half-split RoPE layout
/// (`rotate_half`: pairs `(i, i + head_dim/2)`) to its interleaved layout (pairs
/// `(2i, 2i + 1)`): `w.reshape(n_head, 2, head_dim/2, in).swapaxes(1, 2)`. The inverse is
/// `w.reshape(n_head, head_dim/2, 2, in).swapaxes(1, 2)`. `n_head` is the query head count
/// for Q and the KV head count for K.
pub fn unpermute_qk(w: &Tensor, n_head: i64, file: &str, tensor: &str) -> Result<Tensor> {
    let size = w.size();
    if size.len() != 2 || n_head <= 0 || size[0] % (2 * n_head) != 0 {
        return Err(Error::Format {
            file: file.to_string(),
            reason: format!(
                "tensor `{tensor}` has shape {size:?}; a Q/K projection needs 2 dims with rows \
                 divisible by 2 × {n_head} heads"
            ),
        });
    }
    let (rows, cols) = (size[0], size[1]);
    Ok(w.reshape([n_head, rows / n_head / 2, 2, cols])
        .transpose(1, 2)
        .reshape([rows, cols]))
}
