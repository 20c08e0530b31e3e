//! Pooling of cache slots into groups, shared by `kv_merge` and `chunk_mean`.

use kvcat_core::{probe, CompressionInput, Error, LayerCache, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// The bias a pooled slot gets, so that one slot can stand for several.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MergeBias {
    /// No bias.
    None,
    /// `β = ln |group|` (proportional attention): a group of `n` identical slots attends
    /// exactly like the originals.
    Count,
}

/// Pools the slots of `layer` into `t` groups per head.
///
/// - `assign` `[b, h, s]` int64 in `0..t`: the group of each slot (every group non-empty);
/// - `weight` `[b, h, s]` ≥ 0: the weight of each slot in its group's mean of keys and values
///   (a group whose weights sum to 0 falls back to the uniform mean);
/// - `positions` `[b, h, t]`: the position recorded for each group (bookkeeping only: keys
///   keep their own rotations, the mean is taken on post-RoPE keys).
///
/// Returns `[b, h, t, d]` keys and values; `bias` per [`MergeBias`] plus the mean bias of the
/// group's members when the input layer had one. Hidden input slots must get weight 0.
pub fn pool(
    layer: &LayerCache,
    assign: &Tensor,
    weight: &Tensor,
    positions: Tensor,
    t: i64,
    bias: MergeBias,
) -> Result<LayerCache> {
    let s = layer.k.size();
    let (b, h, d) = (s[0], s[1], s[3]);
    if assign.size() != [b, h, s[2]] || weight.size() != [b, h, s[2]] {
        return Err(Error::invalid(format!(
            "pool: assign {:?} and weight {:?} must be [{b}, {h}, {}]",
            assign.size(),
            weight.size(),
            s[2]
        )));
    }
    let f = Kind::Float;
    let dev = layer.k.device();
    let w = weight.to_kind(f);
    let present = match &layer.keep {
        Some(m) => m.to_kind(f),
        None => Tensor::ones([b, h, s[2]], (f, dev)),
    };
    let zeros3 = Tensor::zeros([b, h, t], (f, dev));
    let count = zeros3.scatter_add(2, assign, &present);
    let wsum = zeros3.scatter_add(2, assign, &w);
    // uniform fallback for groups without weight
    let use_uniform = wsum.le(0.0); // [b, h, t]
    let uni = use_uniform.gather(2, assign, false).to_kind(f);
    let w_eff = &w * (1.0 - &uni) + &present * &uni;
    let denom = zeros3.scatter_add(2, assign, &w_eff).clamp_min(1e-30);
    let idx4 = assign.unsqueeze(-1).expand([b, h, s[2], d], false);
    let zeros4 = Tensor::zeros([b, h, t, d], (f, dev));
    let wk = layer.k.to_kind(f) * w_eff.unsqueeze(-1);
    let wv = layer.v.to_kind(f) * w_eff.unsqueeze(-1);
    let k = zeros4.scatter_add(2, &idx4, &wk) / denom.unsqueeze(-1);
    let v = zeros4.scatter_add(2, &idx4, &wv) / denom.unsqueeze(-1);
    let mut beta = match bias {
        MergeBias::None => None,
        MergeBias::Count => Some(count.clamp_min(1.0).log()),
    };
    if let Some(old) = &layer.bias {
        let mean_old =
            zeros3.scatter_add(2, assign, &(old.to_kind(f) * &present)) / count.clamp_min(1.0);
        beta = Some(match beta {
            Some(bb) => bb + mean_old,
            None => mean_old,
        });
    }
    let kind = layer.k.kind();
    Ok(LayerCache {
        k: k.to_kind(kind),
        v: v.to_kind(kind),
        positions,
        keep: None,
        bias: beta,
    })
}

/// Attention mass `[b, kv_heads, s]` each slot of `layer` receives from the last `window`
/// context queries (causal), summed over those queries and averaged over each KV head's
/// query group. Hidden slots get 0.
pub fn window_mass(input: &CompressionInput, layer: usize, window: i64) -> Result<Tensor> {
    let hidden = input.hidden.get(layer).ok_or_else(|| {
        Error::invalid(format!(
            "attention-weighted pooling needs the prefill hidden states of layer {layer}; \
             CompressionInput.hidden has {} (prefill with kvcat_core::probe::prefill_for_compression)",
            input.hidden.len()
        ))
    })?;
    let tlen = hidden.size()[1];
    let w = window.clamp(1, tlen);
    let q = probe::queries(input.model, layer, hidden, tlen - w, w)?;
    let pos = Tensor::arange_start(tlen - w, tlen, (Kind::Int64, q.device()));
    let p = probe::attention(
        input.model,
        layer,
        &q,
        &input.cache.layers[layer],
        Some(&pos),
    )?;
    let summed = p.sum_dim_intlist(&[2i64][..], false, Kind::Float); // [b, heads, s]
    probe::mean_over_groups(input.model, layer, &summed)
}
