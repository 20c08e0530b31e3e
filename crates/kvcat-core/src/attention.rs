//! Grouped-query self-attention with rotary embeddings, over a caller-owned cache.
//!
//! The additive mask combines: causality for the new tokens, the cache's keep mask
//! (`-inf` for hidden slots), the cache's per-slot bias β, and an optional per-layer bias
//! from the caller. It runs through libtorch's `scaled_dot_product_attention` so CUDA kernels
//! are used; when attention probabilities are requested, an explicit softmax path computes
//! the same function and returns them.

use crate::cache::LayerCache;
use crate::config::LlamaConfig;
use crate::model::{records_grad, FusedWeight, Linear, WeightInit};
use crate::{Error, Result};
use tch::nn;
use tch::{Kind, Tensor};

/// Rotary tables for `positions` `[t]`: `(cos, sin)`, each `[t, head_dim]` in `kind`
/// (HF convention: frequencies duplicated across the two halves, `rotate_half`).
/// Per-row positions `[b, t]` give tables `[b, 1, t, head_dim]`, which broadcast over heads.
pub fn rope_tables(positions: &Tensor, head_dim: i64, theta: f64, kind: Kind) -> (Tensor, Tensor) {
    if positions.dim() == 2 {
        let s = positions.size();
        let (cos, sin) = rope_tables(&positions.flatten(0, 1), head_dim, theta, kind);
        let shape = [s[0], 1, s[1], head_dim];
        return (cos.view(shape), sin.view(shape));
    }
    let device = positions.device();
    let exponent = Tensor::arange_start_step(0, head_dim, 2, (Kind::Int64, device))
        .to_kind(Kind::Float)
        / head_dim as f64;
    let inv_freq = Tensor::from(theta)
        .to_kind(Kind::Float)
        .to_device(device)
        .pow(&exponent)
        .reciprocal();
    let freqs = positions
        .to_kind(Kind::Float)
        .unsqueeze(1)
        .matmul(&inv_freq.unsqueeze(0));
    let emb = Tensor::cat(&[&freqs, &freqs], -1);
    (emb.cos().to_kind(kind), emb.sin().to_kind(kind))
}

/// Rotates `x` `[b, heads, t, d]` by the tables `[t, d]` (or per-row `[b, 1, t, d]`).
pub fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let d = x.size()[3];
    let x1 = x.narrow(-1, 0, d / 2);
    let x2 = x.narrow(-1, d / 2, d / 2);
    let rotated = Tensor::cat(&[&(-x2), &x1], -1);
    x * cos + rotated * sin
}

/// What one attention call captured.
#[derive(Debug, Default)]
pub struct Caught {
    /// Post-RoPE queries `[b, heads, t, d]`.
    pub queries: Option<Tensor>,
    /// Attention probabilities `[b, heads, t, slots + t]`.
    pub attention: Option<Tensor>,
}

/// Which intermediate values to capture.
#[derive(Debug, Clone, Copy, Default)]
pub struct AttentionCapture {
    pub queries: bool,
    pub attention: bool,
}

/// Self-attention of one layer. Projection names follow HF (`q_proj`, `k_proj`, `v_proj`, `o_proj`).
#[derive(Debug)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub num_heads: i64,
    pub num_kv_heads: i64,
    pub head_dim: i64,
    /// `[q; k; v]` `[(heads + 2·kv_heads)·d, hidden]` for inference (one matmul).
    pub qkv: FusedWeight,
}

impl Attention {
    pub fn new(p: &nn::Path, cfg: &LlamaConfig, init: WeightInit) -> Self {
        let (h, d) = (cfg.hidden_size, cfg.head_dim);
        Attention {
            q_proj: Linear::new(&(p / "q_proj"), h, cfg.num_attention_heads * d, init),
            k_proj: Linear::new(&(p / "k_proj"), h, cfg.num_key_value_heads * d, init),
            v_proj: Linear::new(&(p / "v_proj"), h, cfg.num_key_value_heads * d, init),
            o_proj: Linear::new(&(p / "o_proj"), cfg.num_attention_heads * d, h, init),
            num_heads: cfg.num_attention_heads,
            num_kv_heads: cfg.num_key_value_heads,
            head_dim: d,
            qkv: FusedWeight::default(),
        }
    }

    /// Query heads per KV head.
    pub fn groups(&self) -> i64 {
        self.num_heads / self.num_kv_heads
    }

    /// Post-RoPE projections of normed hidden states `x` `[b, t, hidden]`:
    /// `q` `[b, heads, t, d]`, `k`, `v` `[b, kv_heads, t, d]`.
    pub fn project(&self, x: &Tensor, rope: (&Tensor, &Tensor)) -> (Tensor, Tensor, Tensor) {
        let s = x.size();
        let (b, t) = (s[0], s[1]);
        let split = |y: &Tensor, heads: i64| y.view([b, t, heads, self.head_dim]).transpose(1, 2);
        let (q, k, v) = self.qkv_projections(x);
        let (q, k, v) = (
            split(&q, self.num_heads),
            split(&k, self.num_kv_heads),
            split(&v, self.num_kv_heads),
        );
        (
            apply_rope(&q, rope.0, rope.1),
            apply_rope(&k, rope.0, rope.1),
            v,
        )
    }

    /// The three projections of `x` `[b, t, hidden]`: `[b, t, heads·d]`, `[b, t, kv_heads·d]`
    /// twice. Without autograd, one matmul against the fused `[q; k; v]` weight (`v` is copied
    /// out so that a cache holding it does not pin the whole fused output).
    fn qkv_projections(&self, x: &Tensor) -> (Tensor, Tensor, Tensor) {
        let ws = [
            &self.q_proj.weight,
            &self.k_proj.weight,
            &self.v_proj.weight,
        ];
        if ws.iter().any(|w| records_grad(w)) {
            return (
                self.q_proj.forward(x),
                self.k_proj.forward(x),
                self.v_proj.forward(x),
            );
        }
        let (hq, hk) = (
            self.num_heads * self.head_dim,
            self.num_kv_heads * self.head_dim,
        );
        let y = x.matmul(&self.qkv.get(&ws).tr());
        let parts = y.split_with_sizes([hq, hk, hk], -1);
        (
            parts[0].shallow_clone(),
            parts[1].shallow_clone(),
            parts[2].contiguous(),
        )
    }

    /// Expands a per-KV-head tensor `[b, kv_heads, ..]` to query heads `[b, heads, ..]`.
    pub fn expand_kv(&self, x: &Tensor) -> Tensor {
        let g = self.groups();
        if g == 1 {
            x.shallow_clone()
        } else {
            // The output size is given so that CUDA need not sync to compute it.
            x.repeat_interleave_self_int(g, 1, Some(x.size()[1] * g))
        }
    }

    /// Attention of one new token per row over a cache with a keep mask or bias (decoding
    /// after a head-varying or fitted compression), without a per-query-head mask:
    /// `q` `[b, heads, 1, d]` is viewed as `[b, kv_heads, groups, d]`, so the `[b, kv_heads,
    /// 1, slots]` additive mask broadcasts over each KV head's query group. The new token's
    /// own slot is the last one and is always visible, so no causal term is needed.
    /// Returns `[b, heads, 1, d]`.
    fn single_token_attention(&self, q: &Tensor, layer: &LayerCache, scale: f64) -> Tensor {
        let s = q.size();
        let (b, d) = (s[0], s[3]);
        let kind = q.kind();
        let mask = slot_mask(layer, 0, layer.slots(), kind).unwrap_or_else(|| {
            Tensor::zeros([b, self.num_kv_heads, layer.slots()], (kind, q.device()))
        });
        let grouped = q.view([b, self.num_kv_heads, self.groups(), d]);
        Tensor::scaled_dot_product_attention(
            &grouped,
            &layer.k,
            &layer.v,
            Some(mask.unsqueeze(2)),
            0.0,
            false,
            scale,
            false,
        )
        .view([b, self.num_heads, 1, d])
    }

    /// Attention of `t > 1` new tokens `q` `[b, heads, t, d]` over `past > 0` cached slots and
    /// themselves (the last `t` slots of `layer`), on the CPU, as two flash-attention calls
    /// merged by their log-sum-exps: a softmax over a union of key sets is the two partial
    /// softmaxes weighted by `σ(lse_past − lse_new)`. The cached part sees only the cache's own
    /// mask (keep and bias), `[b, heads, 1, past]` broadcast over the queries; the new part is
    /// plainly causal. One fused call would need a materialised `[b, heads, t, past + t]` mask
    /// and could not skip causally hidden blocks: for a 4,096-token suffix over 1,024 fitted
    /// slots with SmolLM2's heads this is 0.21 s instead of 0.65 s per layer (2 threads).
    /// Used for inference only (see [`splits_cached_attention`]). Returns `[b, heads, t, d]`.
    fn split_cached_attention(
        &self,
        q: &Tensor,
        layer: &LayerCache,
        past: i64,
        scale: f64,
    ) -> Tensor {
        let t = q.size()[2];
        let kind = q.kind();
        let part = |x: &Tensor, from: i64, n: i64| self.expand_kv(&x.narrow(2, from, n));
        let mask = slot_mask(layer, 0, past, kind).map(|m| {
            let m = self.expand_kv(&m).unsqueeze(2); // [b, heads, 1, past]
            let s = m.size();
            m.expand([s[0], s[1], t, past], false)
        });
        let (o_past, mut lse_past) = Tensor::internal_scaled_dot_product_flash_attention_for_cpu(
            q,
            &part(&layer.k, 0, past),
            &part(&layer.v, 0, past),
            0.0,
            false,
            mask,
            scale,
        );
        if let Some(keep) = &layer.keep {
            // the kernel reports lse 0, not −inf, for a head that sees no cached slot
            let blind = keep.narrow(2, 0, past).any_dim(2, true).logical_not(); // [b, kv, 1]
            lse_past = lse_past.masked_fill(&self.expand_kv(&blind), f64::NEG_INFINITY);
        }
        let (o_new, lse_new) = Tensor::internal_scaled_dot_product_flash_attention_for_cpu(
            q,
            &part(&layer.k, past, t),
            &part(&layer.v, past, t),
            0.0,
            true,
            None::<Tensor>,
            scale,
        );
        let w = (lse_past - lse_new).sigmoid().unsqueeze(-1); // [b, heads, t, 1], f32
        let mixed: Tensor =
            o_past.to_kind(Kind::Float) * &w + o_new.to_kind(Kind::Float) * (1.0 - &w);
        mixed.to_kind(kind)
    }

    /// Attention of the new tokens `x` `[b, t, hidden]` (already normed) at `positions` `[t]`
    /// (shared by the batch) or `[b, t]` (per row, e.g. batched decoding after compression).
    ///
    /// Appends to `cache` when given; otherwise returns a fresh [`LayerCache`] for the caller to
    /// store. `layer_bias` is `[b, kv_heads | heads | 1, t, slots + t]`.
    /// Returns the output `[b, t, hidden]`, the fresh cache if any, and the captures.
    pub fn forward(
        &self,
        x: &Tensor,
        cache: Option<&mut LayerCache>,
        positions: &Tensor,
        rope: (&Tensor, &Tensor),
        layer_bias: Option<&Tensor>,
        capture: AttentionCapture,
    ) -> Result<(Tensor, Option<LayerCache>, Caught)> {
        let s = x.size();
        let (b, t) = (s[0], s[1]);
        let (q, k, v) = self.project(x, rope);
        let pos = match positions.dim() {
            2 => positions.unsqueeze(1),
            _ => positions.view([1, 1, t]),
        }
        .expand([b, self.num_kv_heads, t], false);
        let mut owned = None;
        let layer: &LayerCache = match cache {
            Some(c) => {
                c.append(&k, &v, &pos);
                c
            }
            None => owned.insert(LayerCache {
                k,
                v,
                positions: pos.copy(),
                keep: None,
                bias: None,
            }),
        };
        let total = layer.slots();
        let past = total - t;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let mut caught = Caught {
            queries: capture.queries.then(|| q.shallow_clone()),
            attention: None,
        };
        let single_masked = t == 1
            && !capture.attention
            && layer_bias.is_none()
            && (layer.keep.is_some() || layer.bias.is_some());
        let y = if single_masked {
            self.single_token_attention(&q, layer, scale)
        } else if capture.attention {
            let mask = self.additive_mask(layer, b, t, past, layer_bias, q.kind())?;
            let (y, probs) = self.explicit_attention(&q, layer, mask.as_ref(), past, scale);
            caught.attention = Some(probs);
            y
        } else if layer_bias.is_none() && splits_cached_attention(&q, layer, past) {
            self.split_cached_attention(&q, layer, past, scale)
        } else {
            let mask = self.additive_mask(layer, b, t, past, layer_bias, q.kind())?;
            fused_attention(&q, layer, mask, past, scale)
        };
        let out = self.o_proj.forward(&y.transpose(1, 2).contiguous().view([
            b,
            t,
            self.num_heads * self.head_dim,
        ]));
        Ok((out, owned.take(), caught))
    }

    /// Attention with the probabilities materialised (for capture): `q` `[b, heads, t, d]`
    /// over the cache expanded to query heads, `mask` added (else causal over `past` cached
    /// slots when `t > 1`), softmax in f32. Returns the output `[b, heads, t, d]` and the
    /// probabilities `[b, heads, t, slots]` (f32).
    fn explicit_attention(
        &self,
        q: &Tensor,
        layer: &LayerCache,
        mask: Option<&Tensor>,
        past: i64,
        scale: f64,
    ) -> (Tensor, Tensor) {
        let t = q.size()[2];
        let kk = self.expand_kv(&layer.k);
        let vv = self.expand_kv(&layer.v);
        let mut scores = q.matmul(&kk.transpose(-2, -1)) * scale;
        if let Some(m) = mask {
            scores += m;
        } else if t > 1 {
            scores += causal_mask(t, past, q.kind(), q.device());
        }
        let probs = scores.to_kind(Kind::Float).softmax(-1, Kind::Float);
        let y = probs.to_kind(q.kind()).matmul(&vv);
        (y, probs)
    }

    /// The additive mask `[b, heads, t, total]`, or `None` when plain causal attention suffices.
    fn additive_mask(
        &self,
        layer: &LayerCache,
        b: i64,
        t: i64,
        past: i64,
        layer_bias: Option<&Tensor>,
        kind: Kind,
    ) -> Result<Option<Tensor>> {
        if layer.keep.is_none() && layer.bias.is_none() && layer_bias.is_none() {
            return Ok(None);
        }
        let device = layer.k.device();
        let total = past + t;
        let mut mask = causal_mask(t, past, kind, device); // [1, 1, t, total]
        if let Some(keep) = &layer.keep {
            let hidden = Tensor::zeros([1], (kind, device)).where_self(
                &keep.unsqueeze(2),
                &Tensor::full([1], f64::NEG_INFINITY, (kind, device)),
            );
            mask = mask + self.expand_kv(&hidden);
        }
        if let Some(bias) = &layer.bias {
            mask = mask + self.expand_kv(&bias.to_kind(kind).unsqueeze(2));
        }
        if let Some(extra) = layer_bias {
            let es = extra.size();
            if es.len() != 4 || es[2] != t || es[3] != total {
                return Err(Error::invalid(format!(
                    "layer_bias has shape {es:?}, expected [b, heads, {t}, {total}]"
                )));
            }
            let extra = if es[1] == self.num_kv_heads && self.num_kv_heads != self.num_heads {
                self.expand_kv(extra)
            } else {
                extra.shallow_clone()
            };
            mask = mask + extra.to_kind(kind);
        }
        Ok(Some(mask.expand([b, self.num_heads, t, total], false)))
    }
}

/// Whether new queries `q` `[b, heads, t, d]` after `past` cached slots of `layer` take
/// [`split_cached_attention`](Attention::split_cached_attention): several new tokens after a
/// cache, on the CPU, in a floating dtype that the CPU flash kernel takes, and with no gradient
/// to record, neither through the queries nor through the cache (the kernel's backward gives
/// no gradient to its mask, which holds the bias β that `kv_fit`'s `next_token_kl` fits;
/// training keeps the single fused call).
fn splits_cached_attention(q: &Tensor, layer: &LayerCache, past: i64) -> bool {
    let no_grad = |x: &Tensor| !x.requires_grad();
    q.size()[2] > 1
        && past > 0
        && q.device() == tch::Device::Cpu
        && matches!(q.kind(), Kind::Float | Kind::BFloat16 | Kind::Half)
        && no_grad(q)
        && no_grad(&layer.k)
        && no_grad(&layer.v)
        && layer.bias.as_ref().is_none_or(no_grad)
}

/// The cache's own additive mask over slots `from..from + n`: `[b, kv_heads, n]` in `kind`,
/// `-inf` where the keep mask hides a slot, plus the per-slot bias β; `None` when the layer
/// has neither.
fn slot_mask(layer: &LayerCache, from: i64, n: i64, kind: Kind) -> Option<Tensor> {
    if layer.keep.is_none() && layer.bias.is_none() {
        return None;
    }
    let s = layer.k.size();
    let mut mask = Tensor::zeros([s[0], s[1], n], (kind, layer.k.device()));
    if let Some(keep) = &layer.keep {
        mask = mask.masked_fill(&keep.narrow(2, from, n).logical_not(), f64::NEG_INFINITY);
    }
    if let Some(bias) = &layer.bias {
        mask += bias.narrow(2, from, n).to_kind(kind);
    }
    Some(mask)
}

/// Attention through libtorch's fused kernel (grouped-query heads enabled): `q`
/// `[b, heads, t, d]` over the cache, with `mask` when given, else causal (an explicit
/// causal mask over `past` cached slots when there are some). Returns `[b, heads, t, d]`.
fn fused_attention(
    q: &Tensor,
    layer: &LayerCache,
    mask: Option<Tensor>,
    past: i64,
    scale: f64,
) -> Tensor {
    let t = q.size()[2];
    let is_causal = mask.is_none() && past == 0 && t > 1;
    if mask.is_none() && past > 0 && t > 1 {
        let m = causal_mask(t, past, q.kind(), q.device());
        Tensor::scaled_dot_product_attention(
            q,
            &layer.k,
            &layer.v,
            Some(m),
            0.0,
            false,
            scale,
            true,
        )
    } else {
        Tensor::scaled_dot_product_attention(
            q, &layer.k, &layer.v, mask, 0.0, is_causal, scale, true,
        )
    }
}

/// `[1, 1, t, past + t]`: 0 where query `i` may see key `j` (all cached slots, and new keys
/// `j ≤ i`), `-inf` elsewhere.
pub fn causal_mask(t: i64, past: i64, kind: Kind, device: tch::Device) -> Tensor {
    let total = past + t;
    let q = Tensor::arange(t, (Kind::Int64, device)).unsqueeze(1) + past;
    let k = Tensor::arange(total, (Kind::Int64, device)).unsqueeze(0);
    let allowed = k.le_tensor(&q);
    Tensor::zeros([1], (kind, device))
        .where_self(
            &allowed,
            &Tensor::full([1], f64::NEG_INFINITY, (kind, device)),
        )
        .view([1, 1, t, total])
}
