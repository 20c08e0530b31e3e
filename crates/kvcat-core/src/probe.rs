//! Probes for compressors: recompute a layer's queries from the prefill's hidden states, and
//! attention probabilities of any queries over a (possibly compressed) [`LayerCache`].
//!
//! Query-based scorers (SnapKV, TOVA, H2O, expected attention, KVzip) and the fitting
//! compressors need the queries the model issued at some positions. Rather than capturing all
//! queries during prefill, they recompute them from the per-layer hidden states
//! (`CompressionInput::hidden`, each `[b, t, hidden]`, the *input* of layer `i` before its
//! `input_layernorm`), exactly as kvpress recomputes them inside its forward hook.

use crate::attention::rope_tables;
use crate::cache::{KvCache, LayerCache};
use crate::model::{ForwardOptions, Llama, Logits};
use crate::{Error, Result};
use tch::{Kind, Tensor};

/// Runs `context` `[b, t]` into a fresh cache and keeps every layer's input hidden states:
/// returns `(cache, hidden)` with `hidden.len() == num_layers + 1`, each `[b, t, hidden]`
/// (the last is the final pre-norm output). No logits are computed; no gradient is recorded.
pub fn prefill_for_compression(model: &Llama, context: &Tensor) -> Result<(KvCache, Vec<Tensor>)> {
    let _g = tch::no_grad_guard();
    let mut cache = KvCache::new();
    let out = model.forward_with(
        context,
        &mut cache,
        &ForwardOptions {
            capture_hidden: true,
            logits: Logits::None,
            ..Default::default()
        },
    )?;
    Ok((cache, out.hidden))
}

fn check_layer(model: &Llama, layer: usize) -> Result<()> {
    if layer >= model.layers.len() {
        return Err(Error::invalid(format!(
            "layer {layer} out of range: the model has {} layers",
            model.layers.len()
        )));
    }
    Ok(())
}

/// Post-RoPE queries of `layer` for the hidden states `hidden` `[b, t, hidden]` (that layer's
/// input, pre-norm), at the positions `start .. start + len` of `hidden`, rotated for those
/// same positions. Returns `[b, heads, len, head_dim]` in the model dtype.
pub fn queries(
    model: &Llama,
    layer: usize,
    hidden: &Tensor,
    start: i64,
    len: i64,
) -> Result<Tensor> {
    queries_at(model, layer, hidden, start, len, start)
}

/// Like [`queries`], but rotates the queries as if they sat at positions
/// `rope_start .. rope_start + len` (e.g. queries from a "repeat the context" pass that
/// follow the original context).
pub fn queries_at(
    model: &Llama,
    layer: usize,
    hidden: &Tensor,
    start: i64,
    len: i64,
    rope_start: i64,
) -> Result<Tensor> {
    let q = prerope_queries(model, layer, hidden, start, len)?;
    let d = model.layers[layer].self_attn.head_dim;
    let pos = Tensor::arange_start(rope_start, rope_start + len, (Kind::Int64, q.device()));
    let (cos, sin) = rope_tables(&pos, d, model.config.rope_theta, q.kind());
    Ok(crate::attention::apply_rope(&q, &cos, &sin))
}

/// Pre-RoPE queries of `layer` (`q_proj` output only) for `hidden` `[b, t, hidden]` at positions
/// `start .. start + len`: `[b, heads, len, head_dim]` (expected attention models their
/// distribution before rotating it).
pub fn prerope_queries(
    model: &Llama,
    layer: usize,
    hidden: &Tensor,
    start: i64,
    len: i64,
) -> Result<Tensor> {
    check_layer(model, layer)?;
    let s = hidden.size();
    if s.len() != 3 || start < 0 || len < 1 || start + len > s[1] {
        return Err(Error::invalid(format!(
            "probe::prerope_queries: positions {start}..{} out of range for hidden states {s:?}",
            start + len
        )));
    }
    let _g = tch::no_grad_guard();
    let l = &model.layers[layer];
    let x = l.input_layernorm.forward(&hidden.narrow(1, start, len));
    let attn = &l.self_attn;
    Ok(attn
        .q_proj
        .forward(&x)
        .view([s[0], len, attn.num_heads, attn.head_dim])
        .transpose(1, 2))
}

/// Post-RoPE keys and values of `layer` for `hidden` `[b, t, hidden]` at positions
/// `start .. start + len`: `(k, v)`, each `[b, kv_heads, len, head_dim]`.
pub fn keys_values(
    model: &Llama,
    layer: usize,
    hidden: &Tensor,
    start: i64,
    len: i64,
) -> Result<(Tensor, Tensor)> {
    check_layer(model, layer)?;
    let s = hidden.size();
    if s.len() != 3 || start < 0 || len < 1 || start + len > s[1] {
        return Err(Error::invalid(format!(
            "probe::keys_values: positions {start}..{} out of range for hidden states {s:?}",
            start + len
        )));
    }
    let _g = tch::no_grad_guard();
    let l = &model.layers[layer];
    let x = l.input_layernorm.forward(&hidden.narrow(1, start, len));
    let pos = Tensor::arange_start(start, start + len, (Kind::Int64, x.device()));
    let (cos, sin) = rope_tables(
        &pos,
        l.self_attn.head_dim,
        model.config.rope_theta,
        x.kind(),
    );
    let (_, k, v) = l.self_attn.project(&x, (&cos, &sin));
    Ok((k, v))
}

/// Attention logits (scaled scores plus the cache's keep mask and bias) of `queries`
/// `[b, heads, q, d]` over `cache` `[b, kv_heads, slots, d]`: `[b, heads, q, slots]` in f32.
///
/// When `query_positions` (`[q]` int64) is given, a slot whose original position is greater than
/// a query's position is hidden from it (causality within the prefill).
pub fn attention_logits(
    model: &Llama,
    layer: usize,
    queries: &Tensor,
    cache: &LayerCache,
    query_positions: Option<&Tensor>,
) -> Result<Tensor> {
    check_layer(model, layer)?;
    let attn = &model.layers[layer].self_attn;
    let qs = queries.size();
    if qs.len() != 4 || qs[1] != attn.num_heads || qs[3] != attn.head_dim {
        return Err(Error::invalid(format!(
            "probe::attention: queries have shape {qs:?}, expected [b, {}, q, {}]",
            attn.num_heads, attn.head_dim
        )));
    }
    let _g = tch::no_grad_guard();
    let kk = attn.expand_kv(&cache.k).to_kind(Kind::Float);
    let scale = 1.0 / (attn.head_dim as f64).sqrt();
    let mut logits = queries.to_kind(Kind::Float).matmul(&kk.transpose(-2, -1)) * scale;
    let device = logits.device();
    let neg = Tensor::full([1], f64::NEG_INFINITY, (Kind::Float, device));
    let zero = Tensor::zeros([1], (Kind::Float, device));
    if let Some(keep) = &cache.keep {
        let m = zero.where_self(&keep.unsqueeze(2), &neg); // [b, kv, 1, s]
        logits += attn.expand_kv(&m);
    }
    if let Some(bias) = &cache.bias {
        logits += attn.expand_kv(&bias.to_kind(Kind::Float).unsqueeze(2));
    }
    if let Some(qp) = query_positions {
        if qp.size() != [qs[2]] {
            return Err(Error::invalid(format!(
                "probe::attention: query_positions has shape {:?}, expected [{}]",
                qp.size(),
                qs[2]
            )));
        }
        // visible[b, kv, q, s] = slot position <= query position
        let visible = cache
            .positions
            .unsqueeze(2)
            .le_tensor(&qp.to_device(device).view([1, 1, -1, 1]));
        let m = zero.where_self(&visible, &neg);
        logits += attn.expand_kv(&m);
    }
    Ok(logits)
}

/// Attention probabilities of `queries` `[b, heads, q, d]` over `cache`: softmax of
/// [`attention_logits`], `[b, heads, q, slots]` in f32. Hidden slots get exactly 0.
pub fn attention(
    model: &Llama,
    layer: usize,
    queries: &Tensor,
    cache: &LayerCache,
    query_positions: Option<&Tensor>,
) -> Result<Tensor> {
    Ok(attention_logits(model, layer, queries, cache, query_positions)?.softmax(-1, Kind::Float))
}

/// Averages a per-query-head tensor `[b, heads, ..]` over each KV head's group:
/// `[b, kv_heads, ..]` (how kvpress reduces GQA scores).
pub fn mean_over_groups(model: &Llama, layer: usize, x: &Tensor) -> Result<Tensor> {
    check_layer(model, layer)?;
    let attn = &model.layers[layer].self_attn;
    let s = x.size();
    let mut shape = vec![s[0], attn.num_kv_heads, attn.groups()];
    shape.extend_from_slice(&s[2..]);
    Ok(x.view(shape.as_slice()).mean_dim(2, false, x.kind()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LlamaConfig, Model};
    use tch::Device;

    fn tiny(kv_heads: i64) -> Model {
        tch::manual_seed(3);
        let cfg = LlamaConfig {
            vocab_size: 61,
            intermediate_size: 48,
            num_key_value_heads: kv_heads,
            max_position_embeddings: 128,
            ..LlamaConfig::tiny()
        };
        Model::from_config(&cfg, Device::Cpu, Kind::Float).expect("tiny model")
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    #[test]
    fn recomputed_queries_keys_and_attention_match_the_forward_captures() {
        for kvh in [2, 4] {
            let m = tiny(kvh);
            let x = Tensor::randint(61, [2, 9], (Kind::Int64, Device::Cpu));
            let _g = tch::no_grad_guard();
            let mut cache = KvCache::new();
            let out = m
                .forward_with(
                    &x,
                    &mut cache,
                    &ForwardOptions {
                        capture_hidden: true,
                        capture_queries: true,
                        capture_attention: true,
                        ..Default::default()
                    },
                )
                .expect("forward");
            let (c2, hidden) = prefill_for_compression(&m, &x).expect("prefill");
            assert_eq!(hidden.len(), 3);
            let positions = Tensor::arange(9, (Kind::Int64, Device::Cpu));
            for l in 0..2 {
                let q = queries(&m, l, &hidden[l], 0, 9).expect("queries");
                assert!(max_diff(&q, &out.queries[l]) < 1e-5);
                let q_tail = queries(&m, l, &hidden[l], 6, 3).expect("tail");
                assert!(max_diff(&q_tail, &out.queries[l].narrow(2, 6, 3)) < 1e-5);
                let (k, v) = keys_values(&m, l, &hidden[l], 0, 9).expect("kv");
                assert!(max_diff(&k, &c2.layers[l].k) < 1e-5);
                assert!(max_diff(&v, &c2.layers[l].v) < 1e-5);
                let a = attention(&m, l, &q, &cache.layers[l], Some(&positions)).expect("attn");
                assert!(max_diff(&a, &out.attention[l]) < 1e-5);
            }
        }
    }

    #[test]
    fn attention_honours_keep_mask_and_bias() {
        let m = tiny(2);
        let x = Tensor::randint(61, [1, 6], (Kind::Int64, Device::Cpu));
        let (mut cache, hidden) = prefill_for_compression(&m, &x).expect("prefill");
        let q = queries(&m, 0, &hidden[0], 5, 1).expect("q");
        let layer = &mut cache.layers[0];
        let keep = Tensor::ones([1, 2, 6], (Kind::Bool, Device::Cpu));
        let _ = keep.get(0).get(1).get(2).fill_(0);
        layer.keep = Some(keep);
        let bias = Tensor::zeros([1, 2, 6], (Kind::Float, Device::Cpu));
        let _ = bias.get(0).get(0).get(4).fill_(2.0);
        layer.bias = Some(bias);
        let a = attention(&m, 0, &q, layer, None).expect("attn");
        // heads 2, 3 belong to KV head 1, whose slot 2 is hidden
        assert_eq!(a.double_value(&[0, 2, 0, 2]), 0.0);
        assert_eq!(a.double_value(&[0, 3, 0, 2]), 0.0);
        assert!(a.double_value(&[0, 0, 0, 2]) > 0.0);
        let sums = a.sum_dim_intlist(-1, false, Kind::Float);
        assert!(max_diff(&sums, &sums.ones_like()) < 1e-5);
        let logits = attention_logits(&m, 0, &q, layer, None).expect("logits");
        layer.bias = None;
        let plain = attention_logits(&m, 0, &q, layer, None).expect("logits");
        let d = (&logits - &plain).double_value(&[0, 1, 0, 4]);
        assert!((d - 2.0).abs() < 1e-5, "{d}");
    }
}
