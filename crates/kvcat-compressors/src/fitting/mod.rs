//! Optimization-based KV fitting: compacted caches whose keys, values and per-slot bias β are
//! *fitted* so that attention over them reproduces attention over the full cache.
//!
//! - [`attention_matching`]: closed form (key subset, NNLS mass bias, least-squares values),
//!   after Zweiger et al. 2026, "Fast KV Compaction via Attention Matching".
//! - [`kv_fit`]: gradient-based (Adam) refinement of free keys, values and β, initialised from
//!   any registered eviction compressor, in the spirit of KVSculpt and Cartridges.
//!
//! Both use reference queries from a "repeat the context" pass ([`reference`]) and report the
//! fitting time and final reconstruction error in [`Compressed::extra`](kvcat_core::Compressed).

pub mod adam;
pub mod attention_matching;
pub mod compact;
pub mod compact_batch;
pub mod kl;
pub mod kv_fit;
pub mod nnls;
pub mod nnls_batch;
pub mod reference;

use compact::HeadFit;
use kvcat_core::{probe, Error, LayerCache, Llama, Result};
use tch::{Kind, Tensor};

/// The per-slot logit offset a layer's attention adds: its bias, and `-inf` for hidden slots.
/// `[b, kv_heads, slots]` f64, or `None` when the layer has neither.
pub fn layer_offset(layer: &LayerCache) -> Option<Tensor> {
    if layer.keep.is_none() && layer.bias.is_none() {
        return None;
    }
    let s = layer.k.size();
    let opts = (Kind::Double, layer.k.device());
    let mut off = match &layer.bias {
        Some(b) => b.to_kind(Kind::Double),
        None => Tensor::zeros([s[0], s[1], s[2]], opts),
    };
    if let Some(keep) = &layer.keep {
        off = off.masked_fill(&keep.logical_not(), f64::NEG_INFINITY);
    }
    Some(off)
}

/// Assembles per-head fits (row-major over `[b, kv_heads]`) into a [`LayerCache`] of `t` slots
/// per head in the dtype of `orig`. A head that kept fewer than `t` slots (too few visible
/// ones) is padded with hidden slots, and the layer then carries a keep mask.
pub fn pad_heads(orig: &LayerCache, fits: &[HeadFit], t: i64) -> Result<LayerCache> {
    let s = orig.k.size();
    let (b, h, d) = (s[0], s[1], s[3]);
    if fits.len() as i64 != b * h {
        return Err(Error::invalid(format!(
            "pad_heads: {} head fits for a [{b}, {h}] cache",
            fits.len()
        )));
    }
    let cpu = tch::Device::Cpu;
    let (mut ks, mut vs, mut bs, mut ps, mut ms) = (vec![], vec![], vec![], vec![], vec![]);
    let mut padded = false;
    for (i, f) in fits.iter().enumerate() {
        let (bi, hi) = (i as i64 / h, i as i64 % h);
        let n = f.index.size()[0];
        let pad = t - n;
        padded |= pad > 0;
        let pos = orig
            .positions
            .get(bi)
            .get(hi)
            .to_device(cpu)
            .index_select(0, &f.index);
        let z2 = Tensor::zeros([pad, d], (Kind::Double, cpu));
        ks.push(Tensor::cat(
            &[f.k.to_kind(Kind::Double), z2.shallow_clone()],
            0,
        ));
        vs.push(Tensor::cat(&[f.v.to_kind(Kind::Double), z2], 0));
        bs.push(Tensor::cat(
            &[
                f.bias.to_kind(Kind::Double),
                Tensor::zeros([pad], (Kind::Double, cpu)),
            ],
            0,
        ));
        ps.push(Tensor::cat(
            &[pos, Tensor::zeros([pad], (Kind::Int64, cpu))],
            0,
        ));
        ms.push(Tensor::cat(
            &[
                Tensor::ones([n], (Kind::Bool, cpu)),
                Tensor::zeros([pad], (Kind::Bool, cpu)),
            ],
            0,
        ));
    }
    let dev = orig.k.device();
    let kind = orig.k.kind();
    let stack = |v: &[Tensor]| Tensor::stack(v, 0).to_device(dev);
    Ok(LayerCache {
        k: stack(&ks).view([b, h, t, d]).to_kind(kind),
        v: stack(&vs).view([b, h, t, d]).to_kind(kind),
        positions: stack(&ps).view([b, h, t]),
        keep: padded.then(|| stack(&ms).view([b, h, t])),
        bias: Some(stack(&bs).view([b, h, t]).to_kind(Kind::Float)),
    })
}

/// Relative attention-output error of `compressed` against `original` for `queries`
/// `[b, heads, q, d]` of `layer`: `‖O_c − O‖_F / ‖O‖_F`, where `O = softmax(qKᵀ/√d + β) V`
/// over the context slots only (both caches' keep masks and biases honoured).
pub fn attention_output_error(
    model: &Llama,
    layer: usize,
    queries: &Tensor,
    original: &LayerCache,
    compressed: &LayerCache,
) -> Result<f64> {
    let o = attention_output(model, layer, queries, original)?;
    let c = attention_output(model, layer, queries, compressed)?;
    let num = (&c - &o).norm().double_value(&[]);
    Ok(num / o.norm().double_value(&[]).max(1e-300))
}

/// `softmax(qKᵀ/√d + β) V` of `queries` `[b, heads, q, d]` over `cache`: `[b, heads, q, d]` f32.
pub fn attention_output(
    model: &Llama,
    layer: usize,
    queries: &Tensor,
    cache: &LayerCache,
) -> Result<Tensor> {
    let p = probe::attention(model, layer, queries, cache, None)?;
    let attn = &model.layers[layer].self_attn;
    Ok(p.matmul(&attn.expand_kv(&cache.v).to_kind(Kind::Float)))
}
