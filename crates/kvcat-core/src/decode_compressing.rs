//! Greedy decoding that compresses the cache while it generates, as kvpress's `DecodingPress`
//! does: after every `N` generated tokens (or whenever the cache holds more than a slot
//! count), the cache is compressed back to its budget with any registered [`Compressor`].
//!
//! Compressors see the whole token history: `CompressionInput::context` is every token fed so
//! far (`[1, seq_len]`: context, prompt, generated tokens) and `hidden` their per-layer input
//! hidden states (`[1, seq_len, hidden]`, index = original position), so query-based scorers
//! recompute the most recent queries at their true positions. The cache itself holds only what
//! earlier compressions kept. The budget is re-applied to the tokens seen so far: a fraction
//! `b` compresses to `floor(b · seq_len)` slots per head, an absolute budget to its slot
//! count. A compression that would keep every slot is skipped and not counted.
//!
//! Compressors that rebuild the cache from the uncompressed prefill (`gist`, `kvzip`,
//! `prompt_lingua`) refuse an already-compressed cache; the error names the compressor and the
//! generated-token count.

use crate::budget::Budget;
use crate::cache::KvCache;
use crate::compressor::{CompressionInput, Compressor};
use crate::model::{ForwardOptions, Llama, Logits};
use crate::{Error, Result};
use tch::Tensor;

/// When to compress during generation. Both triggers may be set; either fires.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Schedule {
    /// Compress after every `N` generated tokens have been appended to the cache.
    pub every: Option<usize>,
    /// Compress whenever the cache holds more than this many slots per head.
    pub max_slots: Option<i64>,
}

/// The compressor, its budget and when to apply it.
pub struct DecodeCompression<'a> {
    pub compressor: &'a dyn Compressor,
    pub budget: Budget,
    pub schedule: Schedule,
    /// Seed for stochastic compressors (incremented per compression).
    pub seed: u64,
}

/// The tokens fed so far and their per-layer input hidden states, kept in chunks.
pub struct History {
    ids: Vec<Tensor>,
    hidden: Vec<Vec<Tensor>>,
}

impl History {
    /// Starts from the prefill: `context` `[1, t]` and its captured hidden states
    /// (`num_layers + 1` tensors `[1, t, hidden]`, as `ForwardOptions::capture_hidden` gives).
    pub fn new(context: &Tensor, hidden: &[Tensor]) -> Self {
        History {
            ids: vec![context.shallow_clone()],
            hidden: hidden.iter().map(|h| vec![h.shallow_clone()]).collect(),
        }
    }

    fn push(&mut self, ids: &Tensor, hidden: &[Tensor]) -> Result<()> {
        if hidden.len() != self.hidden.len() {
            return Err(Error::invalid(format!(
                "decode history: {} hidden-state layers captured, expected {}",
                hidden.len(),
                self.hidden.len()
            )));
        }
        self.ids.push(ids.shallow_clone());
        for (chunks, h) in self.hidden.iter_mut().zip(hidden) {
            chunks.push(h.shallow_clone());
        }
        Ok(())
    }

    /// Concatenates the chunks (once) and returns `(ids [1, n], hidden per layer [1, n, h])`.
    fn joined(&mut self) -> (Tensor, Vec<Tensor>) {
        let ids = Tensor::cat(&self.ids, 1);
        self.ids = vec![ids.shallow_clone()];
        let hidden: Vec<Tensor> = self.hidden.iter().map(|c| Tensor::cat(c, 1)).collect();
        self.hidden = hidden.iter().map(|h| vec![h.shallow_clone()]).collect();
        (ids, hidden)
    }
}

/// What a compressing decode produced.
#[derive(Debug, Clone, PartialEq)]
pub struct CompressedDecode {
    /// The generated ids (stop token excluded).
    pub ids: Vec<i64>,
    /// How many compressions ran during generation.
    pub compressions: usize,
    /// K/V bytes of the visible slots at the end ([`KvCache::kept_bytes`]).
    pub kv_bytes_end: i64,
}

/// Slots per head to compress to for `seq_len` tokens seen.
fn target_slots(budget: Budget, seq_len: i64) -> i64 {
    match budget {
        Budget::Fraction(_) => budget.kept(seq_len),
        Budget::Slots(n) => n,
    }
}

fn due(schedule: &Schedule, since_last: usize, slots: i64) -> bool {
    schedule.every.is_some_and(|n| since_last >= n) || schedule.max_slots.is_some_and(|m| slots > m)
}

/// Compresses `cache` in place to the budget for its `seq_len`; returns whether it ran.
fn compress_now(
    model: &Llama,
    cache: &mut KvCache,
    history: &mut History,
    comp: &DecodeCompression,
    n: usize,
) -> Result<bool> {
    let slots = cache.layers.first().map_or(0, |l| l.slots());
    let target = target_slots(comp.budget, cache.seq_len);
    if target >= slots {
        return Ok(false);
    }
    let (ids, hidden) = history.joined();
    let input = CompressionInput {
        model,
        cache,
        context: &ids,
        hidden: &hidden,
        question: None,
        budget: Budget::slots(target)?,
        seed: comp.seed.wrapping_add(n as u64),
    };
    let out = comp.compressor.compress(&input).map_err(|e| {
        Error::invalid(format!(
            "compressing with `{}` during generation (compression {}, {} tokens seen): {e}",
            comp.compressor.name(),
            n + 1,
            cache.seq_len
        ))
    })?;
    *cache = out.cache;
    Ok(true)
}

/// Greedy decoding of up to `max_new` tokens after `prompt` (`[1, q]`), like
/// [`crate::decode::greedy`], compressing `cache` per `comp.schedule`. `history` holds the
/// tokens already in `cache` (the prefill) and grows with every fed token.
pub fn greedy_compressing(
    model: &Llama,
    cache: &mut KvCache,
    history: &mut History,
    prompt: &Tensor,
    max_new: usize,
    stop: &[i64],
    comp: &DecodeCompression,
) -> Result<CompressedDecode> {
    let _guard = tch::no_grad_guard();
    let opts = ForwardOptions {
        logits: Logits::Last,
        capture_hidden: true,
        ..Default::default()
    };
    let (mut ids, mut compressions, mut since_last) = (Vec::with_capacity(max_new), 0, 0);
    let mut next_in = prompt.shallow_clone();
    for step in 0..max_new {
        if step > 0 {
            since_last += 1;
        }
        let out = model.forward_with(&next_in, cache, &opts)?;
        history.push(&next_in, &out.hidden)?;
        let logits = out.logits.expect("Logits::Last computes logits");
        let id = logits.get(0).get(0).argmax(-1, false).int64_value(&[]);
        if stop.contains(&id) {
            break;
        }
        ids.push(id);
        let slots = cache.layers.first().map_or(0, |l| l.slots());
        if due(&comp.schedule, since_last, slots) {
            if compress_now(model, cache, history, comp, compressions)? {
                compressions += 1;
            }
            since_last = 0;
        }
        next_in = Tensor::from_slice(&[id])
            .view([1, 1])
            .to_device(model.device());
    }
    Ok(CompressedDecode {
        ids,
        compressions,
        kv_bytes_end: cache.kept_bytes(),
    })
}
