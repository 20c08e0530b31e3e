//! Decoding from a (possibly compressed) cache: greedy generation and continuation NLL.
//! New tokens are positioned from `cache.seq_len`, the original length.
//!
//! The `*_rows` functions decode a batch whose rows have different lengths: a cache built by
//! [`KvCache::stack`] (rows padded with hidden slots), token rows right-padded into a
//! [`RaggedBatch`], and each row positioned from its own original length (`starts`). Padding
//! slots appended by a feed are hidden right away, so every row computes what it would alone.

use crate::cache::{KvCache, LayerCache};
use crate::model::{ForwardOptions, Llama, Logits};
use crate::{Error, Result};
use tch::{Device, Kind, Tensor};

/// Greedy decoding of up to `max_new` tokens after feeding `prompt` (`[1, t]`, may be the
/// question appended to a compressed context). Stops at any id in `stop`. Returns new ids.
pub fn greedy(
    model: &Llama,
    cache: &mut KvCache,
    prompt: &Tensor,
    max_new: usize,
    stop: &[i64],
) -> Result<Vec<i64>> {
    let _guard = tch::no_grad_guard();
    let opts = ForwardOptions {
        logits: Logits::Last,
        ..Default::default()
    };
    let mut out = Vec::with_capacity(max_new);
    let mut next_in = prompt.shallow_clone();
    for _ in 0..max_new {
        let logits = model
            .forward_with(&next_in, cache, &opts)?
            .logits
            .expect("Logits::Last computes logits");
        let id = logits.get(0).get(0).argmax(-1, false).int64_value(&[]);
        if stop.contains(&id) {
            break;
        }
        out.push(id);
        next_in = Tensor::from_slice(&[id])
            .view([1, 1])
            .to_device(model.device());
    }
    Ok(out)
}

/// Summed negative log-likelihood (nats) and token count of `continuation` `[b, c]` given
/// `cache` and the logits `last_logits` `[b, vocab]` that predict its first token.
pub fn continuation_nll(
    model: &Llama,
    cache: &mut KvCache,
    last_logits: &Tensor,
    continuation: &Tensor,
) -> Result<(f64, i64)> {
    let _guard = tch::no_grad_guard();
    let logits = model.forward(continuation, cache)?; // [b, c, V]
    let c = continuation.size()[1];
    let all = Tensor::cat(&[last_logits.unsqueeze(1), logits.narrow(1, 0, c - 1)], 1)
        .to_kind(Kind::Float);
    let logp = all.log_softmax(-1, Kind::Float);
    let tgt = continuation.to_device(logp.device()).unsqueeze(-1);
    let nll = -logp
        .gather(-1, &tgt, false)
        .sum(Kind::Double)
        .double_value(&[]);
    Ok((nll, continuation.numel() as i64))
}

/// Token rows of different lengths, right-padded with id 0 into `ids` `[b, n]`.
#[derive(Debug)]
pub struct RaggedBatch {
    pub ids: Tensor,
    /// Each row's real length (`1 ≤ len ≤ n`).
    pub lens: Vec<i64>,
}

impl RaggedBatch {
    /// Pads `rows` (each `[1, n_i]` int64, `n_i ≥ 1`) to the longest, on `device`.
    pub fn new(rows: &[&Tensor], device: Device) -> Result<Self> {
        let lens: Vec<i64> = rows.iter().map(|r| r.size()[1]).collect();
        let width = lens.iter().copied().max().unwrap_or(0);
        if rows.is_empty() || lens.contains(&0) {
            return Err(Error::invalid(
                "RaggedBatch: every row needs at least one token",
            ));
        }
        let padded: Vec<Tensor> = rows
            .iter()
            .map(|r| {
                r.to_device(device)
                    .pad([0, width - r.size()[1]], "constant", 0.0)
            })
            .collect();
        Ok(RaggedBatch {
            ids: Tensor::cat(&padded, 0),
            lens,
        })
    }

    /// The padded width `n`.
    pub fn width(&self) -> i64 {
        self.ids.size()[1]
    }

    /// `[b, n]` bool: true at real tokens.
    pub fn visible(&self) -> Tensor {
        let device = self.ids.device();
        let lens = Tensor::from_slice(&self.lens)
            .to_device(device)
            .unsqueeze(1);
        Tensor::arange(self.width(), (Kind::Int64, device))
            .unsqueeze(0)
            .lt_tensor(&lens)
    }

    fn ragged(&self) -> bool {
        self.lens.iter().any(|&l| l != self.width())
    }
}

/// Feeds `batch` with row `i` at positions `starts[i] ..`; hides the padding slots it
/// appended. Returns logits `[b, n, vocab]` (row `i`'s real ones are its first `lens[i]`).
pub fn feed_rows(
    model: &Llama,
    cache: &mut KvCache,
    batch: &RaggedBatch,
    starts: &[i64],
) -> Result<Tensor> {
    let device = model.device();
    let n = batch.width();
    let positions = Tensor::from_slice(starts).to_device(device).unsqueeze(1)
        + Tensor::arange(n, (Kind::Int64, device)).unsqueeze(0);
    let opts = ForwardOptions {
        logits: Logits::All,
        ..Default::default()
    };
    let logits = model
        .forward_at(&batch.ids, &positions, cache, &opts)?
        .logits
        .ok_or_else(|| Error::invalid("feed_rows: forward computed no logits"))?;
    if batch.ragged() {
        cache.hide_tail(&batch.visible());
    }
    Ok(logits)
}

/// Row `i`'s logits at its last real token: `logits` `[b, n, V]` → `[b, V]`.
pub fn last_real(logits: &Tensor, lens: &[i64]) -> Tensor {
    let s = logits.size();
    let idx = (Tensor::from_slice(lens).to_device(logits.device()) - 1)
        .view([s[0], 1, 1])
        .expand([s[0], 1, s[2]], false);
    logits.gather(1, &idx, false).squeeze_dim(1)
}

/// Feeds the prompts and returns the logits `[b, vocab]` that predict each row's next token.
pub fn prompt_rows(
    model: &Llama,
    cache: &mut KvCache,
    prompts: &RaggedBatch,
    starts: &[i64],
) -> Result<Tensor> {
    let logits = feed_rows(model, cache, prompts, starts)?;
    Ok(last_real(&logits, &prompts.lens))
}

/// Summed NLL (nats) of each row's real `targets` tokens, teacher-forced: `last` `[b, vocab]`
/// predicts each row's first target, and the targets are fed at positions `starts[i] ..`.
/// The cache is left as it was (the targets' slots are not kept).
pub fn target_nll_rows(
    model: &Llama,
    cache: &mut KvCache,
    last: &Tensor,
    targets: &RaggedBatch,
    starts: &[i64],
) -> Result<Vec<f64>> {
    let _guard = tch::no_grad_guard();
    let mark: Vec<LayerCache> = cache.layers.iter().map(shallow_layer).collect();
    let seq_len = cache.seq_len;
    let logits = feed_rows(model, cache, targets, starts);
    cache.layers = mark;
    cache.seq_len = seq_len;
    let logits = logits?;
    let n = targets.width();
    let all = Tensor::cat(&[last.unsqueeze(1), logits.narrow(1, 0, n - 1)], 1);
    let logp = all.to_kind(Kind::Float).log_softmax(-1, Kind::Float);
    let tgt = targets.ids.to_device(logp.device()).unsqueeze(-1);
    let picked = logp
        .gather(-1, &tgt, false)
        .squeeze_dim(-1)
        .to_kind(Kind::Double);
    let visible = targets
        .visible()
        .to_device(picked.device())
        .to_kind(Kind::Double);
    let sums = -(picked * visible).sum_dim_intlist(1, false, Kind::Double);
    Ok(Vec::<f64>::try_from(sums.to_device(Device::Cpu))?)
}

fn shallow_layer(l: &LayerCache) -> LayerCache {
    LayerCache {
        k: l.k.shallow_clone(),
        v: l.v.shallow_clone(),
        positions: l.positions.shallow_clone(),
        keep: l.keep.as_ref().map(Tensor::shallow_clone),
        bias: l.bias.as_ref().map(Tensor::shallow_clone),
    }
}

/// Greedy decoding of every row at once, after its prompt: `last` `[b, vocab]` predicts each
/// row's first new token and row `i`'s next position is `starts[i]`. Row `i` stops at a `stop`
/// id (not returned) or after `max_new[i]` tokens; finished rows ride along until every row is
/// done. Returns each row's new ids, as [`greedy`] would for that row alone.
pub fn greedy_rows(
    model: &Llama,
    cache: &mut KvCache,
    last: &Tensor,
    starts: &[i64],
    max_new: &[usize],
    stop: &[i64],
) -> Result<Vec<Vec<i64>>> {
    let _guard = tch::no_grad_guard();
    let b = starts.len();
    let mut out: Vec<Vec<i64>> = max_new.iter().map(|&m| Vec::with_capacity(m)).collect();
    let mut active: Vec<bool> = max_new.iter().map(|&m| m > 0).collect();
    let mut positions = starts.to_vec();
    let mut logits = last.shallow_clone();
    while active.iter().any(|&a| a) {
        let next = logits.argmax(-1, false);
        let ids = Vec::<i64>::try_from(next.to_device(Device::Cpu))?;
        for (row, &id) in ids.iter().enumerate() {
            if !active[row] {
                continue;
            }
            if stop.contains(&id) {
                active[row] = false;
                continue;
            }
            out[row].push(id);
            active[row] = out[row].len() < max_new[row];
        }
        if !active.iter().any(|&a| a) {
            break;
        }
        let step = RaggedBatch {
            ids: next.view([b as i64, 1]),
            lens: vec![1; b],
        };
        logits = feed_rows(model, cache, &step, &positions)?.select(1, 0);
        positions.iter_mut().for_each(|p| *p += 1);
    }
    Ok(out)
}
