//! The KV cache, owned by the caller and passed explicitly into [`crate::Llama::forward`].
//!
//! Only compressors evict: the model appends, and nothing inside attention truncates.

use crate::{Error, Result};
use tch::{Kind, Tensor};

/// One layer's cached keys and values.
///
/// Shapes (`b` batch, `h` KV heads, `s` slots, `d` head dim):
/// - `k`, `v`: `[b, h, s, d]`; keys are stored *after* RoPE;
/// - `positions`: `[b, h, s]` int64, the original token position of each slot (bookkeeping only:
///   keys already carry their rotation);
/// - `keep`: optional `[b, h, s]` bool; `false` slots are invisible to attention. Heads may keep
///   different numbers of slots this way;
/// - `bias`: optional `[b, h, s]` float additive attention logit per slot (log-mass β of
///   attention-matching fitting).
#[derive(Debug)]
pub struct LayerCache {
    pub k: Tensor,
    pub v: Tensor,
    pub positions: Tensor,
    pub keep: Option<Tensor>,
    pub bias: Option<Tensor>,
}

impl LayerCache {
    /// Number of slots `s` (including masked ones).
    pub fn slots(&self) -> i64 {
        self.k.size()[2]
    }

    /// A deep copy.
    pub fn copy(&self) -> LayerCache {
        LayerCache {
            k: self.k.copy(),
            v: self.v.copy(),
            positions: self.positions.copy(),
            keep: self.keep.as_ref().map(|t| t.copy()),
            bias: self.bias.as_ref().map(|t| t.copy()),
        }
    }

    /// Appends new slots: `k`, `v` `[b, h, t, d]`, `positions` `[b, h, t]`.
    /// New slots are kept and get bias 0.
    pub fn append(&mut self, k: &Tensor, v: &Tensor, positions: &Tensor) {
        let t = k.size()[2];
        let new_shape = [k.size()[0], k.size()[1], t];
        if let Some(keep) = &self.keep {
            let ones = Tensor::ones(new_shape, (Kind::Bool, keep.device()));
            self.keep = Some(Tensor::cat(&[keep, &ones], 2));
        }
        if let Some(bias) = &self.bias {
            let zeros = Tensor::zeros(new_shape, (bias.kind(), bias.device()));
            self.bias = Some(Tensor::cat(&[bias, &zeros], 2));
        }
        self.k = Tensor::cat(&[&self.k, k], 2);
        self.v = Tensor::cat(&[&self.v, v], 2);
        self.positions = Tensor::cat(&[&self.positions, positions], 2);
    }

    /// Keeps, per batch row and KV head, the slots at `index` (`[b, h, n]` int64), in that order.
    pub fn gather(&self, index: &Tensor) -> LayerCache {
        let d = self.k.size()[3];
        let idx4 = index.unsqueeze(-1).expand([-1, -1, -1, d], false);
        LayerCache {
            k: self.k.gather(2, &idx4, false),
            v: self.v.gather(2, &idx4, false),
            positions: self.positions.gather(2, index, false),
            keep: self.keep.as_ref().map(|m| m.gather(2, index, false)),
            bias: self.bias.as_ref().map(|m| m.gather(2, index, false)),
        }
    }

    /// Number of visible slots per `[b, h]`, as int64.
    pub fn kept_per_head(&self) -> Tensor {
        match &self.keep {
            Some(m) => m.sum_dim_intlist(-1, false, Kind::Int64),
            None => {
                let s = self.k.size();
                Tensor::full([s[0], s[1]], s[2], (Kind::Int64, self.k.device()))
            }
        }
    }

    /// The original positions of visible slots for batch row `b`, one sorted int64 tensor per
    /// KV head (heads may keep different numbers of slots).
    pub fn kept_positions(&self, b: i64) -> Vec<Tensor> {
        let h = self.k.size()[1];
        (0..h)
            .map(|head| {
                let pos = self.positions.get(b).get(head);
                let pos = match &self.keep {
                    Some(m) => pos.masked_select(&m.get(b).get(head)),
                    None => pos,
                };
                pos.sort(0, false).0
            })
            .collect()
    }

    /// Bytes held by `k`, `v` for visible slots (what a real eviction would free).
    pub fn kept_bytes(&self) -> i64 {
        let s = self.k.size();
        let elem = self.k.kind().elt_size_in_bytes() as i64;
        let kept: i64 = self.kept_per_head().sum(Kind::Int64).int64_value(&[]);
        2 * kept * s[3] * elem
    }
}

/// The whole model's KV cache.
///
/// `layers` is empty before the first forward, then holds one [`LayerCache`] per layer.
/// `seq_len` counts the *original* tokens processed; new tokens are positioned from it even
/// after compression shrank the slot count.
#[derive(Debug, Default)]
pub struct KvCache {
    pub layers: Vec<LayerCache>,
    pub seq_len: i64,
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether nothing has been cached yet.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// A deep copy (compressors return new caches; experiments reuse one prefill).
    pub fn copy(&self) -> KvCache {
        KvCache {
            layers: self.layers.iter().map(LayerCache::copy).collect(),
            seq_len: self.seq_len,
        }
    }

    /// Slot count per layer.
    pub fn slots(&self) -> Vec<i64> {
        self.layers.iter().map(LayerCache::slots).collect()
    }

    /// Visible slots summed over layers, heads and batch.
    pub fn kept_slots(&self) -> i64 {
        self.layers
            .iter()
            .map(|l| l.kept_per_head().sum(Kind::Int64).int64_value(&[]))
            .sum()
    }

    /// Bytes of `k`, `v` for visible slots over all layers.
    pub fn kept_bytes(&self) -> i64 {
        self.layers.iter().map(LayerCache::kept_bytes).sum()
    }

    /// Visible slots over the slots of an uncompressed cache of `seq_len` tokens
    /// (the achieved budget written to result rows).
    pub fn achieved_fraction(&self) -> f64 {
        let Some(l0) = self.layers.first() else {
            return 1.0;
        };
        let s = l0.k.size();
        let full = self.layers.len() as i64 * s[0] * s[1] * self.seq_len;
        if full == 0 {
            1.0
        } else {
            self.kept_slots() as f64 / full as f64
        }
    }

    /// Replaces layer `i`, checking that batch, heads and head dim agree.
    pub fn set_layer(&mut self, i: usize, layer: LayerCache) -> Result<()> {
        let old = self
            .layers
            .get(i)
            .ok_or_else(|| Error::invalid(format!("cache has no layer {i}")))?;
        let (a, b) = (old.k.size(), layer.k.size());
        if a[0] != b[0] || a[1] != b[1] || a[3] != b[3] {
            return Err(Error::invalid(format!(
                "layer {i}: replacement cache shape {b:?} is incompatible with {a:?}"
            )));
        }
        self.layers[i] = layer;
        Ok(())
    }
}
