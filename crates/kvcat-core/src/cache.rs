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
        self.map_slots(Tensor::copy)
    }

    /// The layer with `f` applied to every per-slot tensor (`k`, `v`, `positions` and, when
    /// present, `keep` and `bias`), for operations that treat the batch, head and slot
    /// dimensions of all of them alike.
    fn map_slots(&self, f: impl Fn(&Tensor) -> Tensor) -> LayerCache {
        LayerCache {
            k: f(&self.k),
            v: f(&self.v),
            positions: f(&self.positions),
            keep: self.keep.as_ref().map(&f),
            bias: self.bias.as_ref().map(&f),
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

    /// Bytes of `k`, `v` for visible slots (what an ideal ragged per-head layout would hold).
    pub fn kept_bytes(&self) -> i64 {
        let s = self.k.size();
        let elem = self.k.kind().elt_size_in_bytes() as i64;
        let kept: i64 = self.kept_per_head().sum(Kind::Int64).int64_value(&[]);
        2 * kept * s[3] * elem
    }

    /// Bytes this layer really holds for keys and values: `k` and `v` as stored, including
    /// the hidden padding slots of a head-varying layout, plus the keep mask and bias.
    pub fn held_bytes(&self) -> i64 {
        let bytes = |t: &Tensor| t.numel() as i64 * t.kind().elt_size_in_bytes() as i64;
        bytes(&self.k)
            + bytes(&self.v)
            + self.keep.as_ref().map_or(0, bytes)
            + self.bias.as_ref().map_or(0, bytes)
    }

    /// The first `slots` slots of every row, sharing this layer's tensors (and their autograd
    /// history): `[b, h, slots, ..]`.
    pub fn prefix(&self, slots: i64) -> LayerCache {
        self.map_slots(|t| t.narrow(2, 0, slots))
    }

    /// Batch row `row`'s first `slots` slots as a contiguous batch-1 layer `[1, h, slots, ..]`
    /// (one example out of a right-padded batched prefill).
    pub fn row(&self, row: i64, slots: i64) -> LayerCache {
        self.map_slots(|t| t.narrow(0, row, 1).narrow(2, 0, slots).contiguous())
    }

    /// Hides the last `n` slots where `visible` (`[b, n]` bool) is false, e.g. the padding of
    /// right-padded rows appended together. Keep masks are per head, so every head hides them.
    pub fn hide_tail(&mut self, visible: &Tensor) {
        let s = self.k.size();
        let n = visible.size()[1];
        let keep = match &self.keep {
            Some(k) => k.shallow_clone(),
            None => Tensor::ones([s[0], s[1], s[2]], (Kind::Bool, self.k.device())),
        };
        let head = keep.narrow(2, 0, s[2] - n);
        let tail = keep
            .narrow(2, s[2] - n, n)
            .logical_and(&visible.to_device(keep.device()).unsqueeze(1));
        self.keep = Some(Tensor::cat(&[head, tail], 2));
    }

    /// Pads a batch-1 layer to `slots` slots with hidden slots (zero keys and values,
    /// position −1, bias 0). `masked`: give the result a keep mask even without padding;
    /// `bias_kind`: give it a bias of that dtype even when it has none.
    fn padded_to(&self, slots: i64, masked: bool, bias_kind: Option<Kind>) -> LayerCache {
        let s = self.k.size();
        let extra = slots - s[2];
        // Pads dimension 2 (slots) at its end; pad widths run from the last dimension.
        let pad = |t: &Tensor, value: f64| {
            let mut widths = vec![0i64; 2 * (t.dim() - 3)];
            widths.extend([0, extra]);
            if extra == 0 {
                t.shallow_clone()
            } else {
                t.pad(widths, "constant", value)
            }
        };
        let device = self.k.device();
        let keep = match (&self.keep, masked) {
            (Some(k), _) => Some(pad(k, 0.0)),
            (None, true) => Some(pad(
                &Tensor::ones([s[0], s[1], s[2]], (Kind::Bool, device)),
                0.0,
            )),
            (None, false) => None,
        };
        let bias = match (&self.bias, bias_kind) {
            (Some(b), _) => Some(pad(b, 0.0)),
            (None, Some(kind)) => Some(Tensor::zeros([s[0], s[1], slots], (kind, device))),
            (None, None) => None,
        };
        LayerCache {
            k: pad(&self.k, 0.0),
            v: pad(&self.v, 0.0),
            positions: pad(&self.positions, -1.0),
            keep,
            bias,
        }
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

    /// Bytes really held for keys and values over all layers ([`LayerCache::held_bytes`]).
    pub fn held_bytes(&self) -> i64 {
        self.layers.iter().map(LayerCache::held_bytes).sum()
    }

    /// The first `len` slots of every layer, sharing this cache's tensors (and their autograd
    /// history), with `seq_len = len`: the prefix of a cache of consecutive tokens.
    pub fn prefix(&self, len: i64) -> KvCache {
        KvCache {
            layers: self.layers.iter().map(|l| l.prefix(len)).collect(),
            seq_len: len,
        }
    }

    /// Batch row `row` of a right-padded batched prefill whose row holds `len` tokens:
    /// a batch-1 cache of `len` slots per layer with `seq_len = len`.
    pub fn row(&self, row: i64, len: i64) -> KvCache {
        KvCache {
            layers: self.layers.iter().map(|l| l.row(row, len)).collect(),
            seq_len: len,
        }
    }

    /// Stacks batch-1 caches (e.g. each example compressed on its own) into one batch.
    ///
    /// Layer `l` gets `max_i slots_il` slots; shorter rows are padded with hidden slots, so
    /// attention over the batch equals attention over each row alone. The result's
    /// `seq_len` is the largest row's; callers position new tokens per row from each row's
    /// own `seq_len`. Errors when rows disagree in layers, heads or head dim.
    pub fn stack(rows: &[KvCache]) -> Result<KvCache> {
        let first = rows
            .first()
            .ok_or_else(|| Error::invalid("KvCache::stack: no rows"))?;
        let n_layers = first.layers.len();
        let mut layers = Vec::with_capacity(n_layers);
        for l in 0..n_layers {
            let parts: Vec<&LayerCache> = rows
                .iter()
                .map(|r| r.layers.get(l))
                .collect::<Option<_>>()
                .ok_or_else(|| Error::invalid("KvCache::stack: rows differ in layer count"))?;
            layers.push(stack_layer(l, &parts)?);
        }
        let seq_len = rows.iter().map(|r| r.seq_len).max().unwrap_or(0);
        Ok(KvCache { layers, seq_len })
    }

    /// Hides the last `n` slots of every layer where `visible` (`[b, n]` bool) is false.
    pub fn hide_tail(&mut self, visible: &Tensor) {
        for l in &mut self.layers {
            l.hide_tail(visible);
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

/// Stacks layer `l` of batch-1 rows along the batch dimension, padding to the widest row.
fn stack_layer(l: usize, parts: &[&LayerCache]) -> Result<LayerCache> {
    let s0 = parts[0].k.size();
    for p in parts {
        let s = p.k.size();
        if s[0] != 1 || s[1] != s0[1] || s[3] != s0[3] {
            return Err(Error::invalid(format!(
                "KvCache::stack: layer {l} row shape {s:?} is incompatible with {s0:?} \
                 (rows must be batch 1 with equal heads and head dim)"
            )));
        }
    }
    let width = parts.iter().map(|p| p.slots()).max().unwrap_or(0);
    let ragged = parts.iter().any(|p| p.slots() != width);
    let masked = ragged || parts.iter().any(|p| p.keep.is_some());
    let bias_kind = parts.iter().find_map(|p| p.bias.as_ref().map(Tensor::kind));
    let padded: Vec<LayerCache> = parts
        .iter()
        .map(|p| p.padded_to(width, masked, bias_kind))
        .collect();
    let cat = |f: &dyn Fn(&LayerCache) -> Tensor| {
        Tensor::cat(&padded.iter().map(f).collect::<Vec<_>>(), 0)
    };
    Ok(LayerCache {
        k: cat(&|p| p.k.shallow_clone()),
        v: cat(&|p| p.v.shallow_clone()),
        positions: cat(&|p| p.positions.shallow_clone()),
        keep: masked.then(|| cat(&|p| p.keep.as_ref().expect("masked").shallow_clone())),
        bias: bias_kind.map(|_| cat(&|p| p.bias.as_ref().expect("biased").shallow_clone())),
    })
}
