//! Shared helpers: input checks, teacher captures and continuation-query attention over the
//! prefix. Top-k masks come from [`kvcat_core::selection`], the selection compressors use too.

use kvcat_core::{Error, PolicyInput, Result};
use tch::{Kind, Tensor};

pub use kvcat_core::selection::topk_mask;

/// An all-`true` keep mask `[b, h, P]`.
pub fn full_mask(b: i64, h: i64, p: i64, device: tch::Device) -> Tensor {
    Tensor::ones([b, h, p], (Kind::Bool, device))
}

/// Checks the split and budget of a policy input; returns `(b, T, P)`.
pub fn check_input(input: &PolicyInput) -> Result<(i64, i64, i64)> {
    let s = input.tokens.size();
    if s.len() != 2 {
        return Err(Error::invalid(format!(
            "policy input tokens must be [batch, time], got {s:?}"
        )));
    }
    let (b, t, p) = (s[0], s[1], input.prefix_len);
    if p <= 0 || p >= t {
        return Err(Error::invalid(format!(
            "split: prefix length {p} must lie strictly inside the sequence length {t}"
        )));
    }
    if input.kept < 1 || input.kept > p {
        return Err(Error::Budget {
            value: format!("{} slots", input.kept),
            reason: format!("must keep between 1 and the prefix length {p} slots"),
        });
    }
    Ok((b, t, p))
}

/// The teacher's post-RoPE queries of layer `layer`, `[b, heads, T, d]`, or a clear error.
pub fn teacher_queries<'a>(input: &'a PolicyInput, layer: usize, who: &str) -> Result<&'a Tensor> {
    input.teacher.queries.get(layer).ok_or_else(|| {
        Error::invalid(format!(
            "policy `{who}` needs the teacher's captured queries (layer {layer} missing)"
        ))
    })
}

/// Attention probabilities of the continuation queries over all `T` keys, computed from the
/// teacher's captured queries and keys without gradient.
///
/// `q`: `[b, heads, T, d]`, `k`: `[b, kv_heads, T, d]` (post-RoPE); returns `[b, heads, C, T]`
/// in f32 with `C = T − P`, causal within the continuation (the same softmax the unmasked
/// model computes).
pub fn continuation_attention(q: &Tensor, k: &Tensor, prefix_len: i64) -> Tensor {
    let _g = tch::no_grad_guard();
    let (heads, t, d) = (q.size()[1], q.size()[2], q.size()[3]);
    let kv = k.size()[1];
    let c = t - prefix_len;
    let qc = q.narrow(2, prefix_len, c).to_kind(Kind::Float);
    let kk = k.to_kind(Kind::Float);
    let kk = if heads != kv {
        kk.repeat_interleave_self_int(heads / kv, 1, None::<i64>)
    } else {
        kk
    };
    let logits = qc.matmul(&kk.transpose(-2, -1)) / (d as f64).sqrt(); // [b, H, C, T]
    let mask = kvcat_core::attention::causal_mask(c, prefix_len, Kind::Float, q.device());
    (logits + mask).softmax(-1, Kind::Float)
}

/// Sums a per-query-head tensor `[b, heads, ..]` over each KV head's group: `[b, kv_heads, ..]`.
pub fn sum_groups(x: &Tensor, kv_heads: i64) -> Tensor {
    let mut s = x.size();
    let heads = s[1];
    let g = heads / kv_heads;
    let mut shape = vec![s[0], kv_heads, g];
    shape.extend(s.drain(2..));
    x.reshape(&shape).sum_dim_intlist(2, false, x.kind())
}
