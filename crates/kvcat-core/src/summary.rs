//! Learned summary slots: a prefix is replaced by a few slots that were *trained* to summarise
//! it — gist tokens (Mu et al. 2023, "Learning to Compress Prompts with Gist Tokens") and
//! activation beacons (Zhang et al. 2024, "Long Context Compression with Activation Beacon").
//!
//! The prefix of `P` slots is cut into chunks; after the prefill, `g` summary slots per chunk
//! are run at positions `P, P + 1, …` from learned input embeddings (`[max_per_chunk, hidden]`,
//! slot `j` of every chunk shares row `j`). A summary slot attends to the raw slots of its own
//! chunk and to the summary slots before it. The compressed cache holds the summary slots plus
//! a window of the most recent raw slots; what follows continues at position `P + S` (`S`
//! summary slots in all). Budget accounting counts summary slots as kept slots:
//! `window + S = kept`.
//!
//! The same code runs in training (the `gist` policy, with gradient through the prefix cache
//! and the embeddings) and at evaluation (the `gist` compressor), so they cannot drift apart.

use crate::cache::{KvCache, LayerCache};
use crate::model::{ForwardOptions, Llama, Logits};
use crate::{Error, Result};
use tch::{Kind, Tensor};

/// Where a checkpoint's summary embeddings are found among its learned policy tensors
/// ([`Llama::learned`]): `[max_per_chunk, hidden]`.
pub const EMBEDDINGS: &str = "gist.embeddings";
/// The chunk length they were trained with (a one-element tensor beside them).
pub const CHUNK_LEN: &str = "gist.chunk_len";

/// How a prefix of `prefix_len` slots is summarised within a budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SummaryLayout {
    pub prefix_len: i64,
    /// `[start, end)` raw-slot ranges, one per chunk, covering `[0, P − window)` in order;
    /// each holds at least `per_chunk` slots.
    pub chunks: Vec<(i64, i64)>,
    /// Summary slots per chunk (`g ≥ 1`).
    pub per_chunk: i64,
    /// Most recent raw slots kept beside the summaries.
    pub window: i64,
}

impl SummaryLayout {
    /// The layout for `kept ≤ prefix_len` slots per head: `n = min(⌈P / chunk_len⌉, kept)`
    /// chunks, `g = min(⌊kept / n⌋, max_per_chunk)` summary slots per chunk, the rest of the
    /// budget as a window of recent raw slots, and the chunks splitting what the window does
    /// not keep (each at least `g` long, since `P − window ≥ n · g`).
    pub fn for_budget(
        prefix_len: i64,
        kept: i64,
        chunk_len: i64,
        max_per_chunk: i64,
    ) -> Result<SummaryLayout> {
        if prefix_len < 1 || kept < 1 || kept > prefix_len || chunk_len < 1 || max_per_chunk < 1 {
            return Err(Error::invalid(format!(
                "summary layout: prefix {prefix_len}, kept {kept} (1..=prefix), chunk_len \
                 {chunk_len} and max_per_chunk {max_per_chunk} must all be at least 1"
            )));
        }
        let n = ((prefix_len + chunk_len - 1) / chunk_len).min(kept);
        let per_chunk = (kept / n).min(max_per_chunk);
        let window = kept - n * per_chunk;
        let span = prefix_len - window;
        let chunks = (0..n).map(|c| (c * span / n, (c + 1) * span / n)).collect();
        Ok(SummaryLayout {
            prefix_len,
            chunks,
            per_chunk,
            window,
        })
    }

    /// Summary slots `S` in all.
    pub fn summary_slots(&self) -> i64 {
        self.chunks.len() as i64 * self.per_chunk
    }

    /// Slots of the compressed cache: `window + S`.
    pub fn kept(&self) -> i64 {
        self.window + self.summary_slots()
    }

    /// The positions of the summary slots, `[S]`: the last `g` positions of each chunk.
    fn positions(&self, device: tch::Device) -> Tensor {
        let g = self.per_chunk;
        let pos: Vec<i64> = self.chunks.iter().flat_map(|&(_, e)| e - g..e).collect();
        Tensor::from_slice(&pos).to_device(device)
    }

    /// The attention bias of the summary slots over `[prefix; summaries]`:
    /// `[1, 1, S, P + S]`, 0 on the raw slots of a slot's own chunk and on every summary slot
    /// (attention adds causality among them), `-inf` elsewhere.
    fn bias(&self, kind: Kind, device: tch::Device) -> Tensor {
        let (p, s) = (self.prefix_len, self.summary_slots());
        let mut allowed = vec![false; (s * (p + s)) as usize];
        for (c, &(start, end)) in self.chunks.iter().enumerate() {
            for j in 0..self.per_chunk {
                let row = (c as i64 * self.per_chunk + j) * (p + s);
                for col in (start..end).chain(p..p + s) {
                    allowed[(row + col) as usize] = true;
                }
            }
        }
        let allowed = Tensor::from_slice(&allowed)
            .reshape([1, 1, s, p + s])
            .to_device(device);
        let neg = Tensor::full([1], f64::NEG_INFINITY, (kind, device));
        Tensor::zeros([1], (kind, device)).where_self(&allowed, &neg)
    }
}

/// The summary input embeddings `[b, S, hidden]` of `layout`: rows `0..g` of `embeddings`
/// (`[max_per_chunk, hidden]`) once per chunk.
fn summary_inputs(embeddings: &Tensor, layout: &SummaryLayout, batch: i64) -> Result<Tensor> {
    let rows = embeddings.size()[0];
    if layout.per_chunk > rows {
        return Err(Error::invalid(format!(
            "summary layout wants {} slots per chunk but only {rows} embeddings were learned",
            layout.per_chunk
        )));
    }
    let one = embeddings
        .narrow(0, 0, layout.per_chunk)
        .repeat([layout.chunks.len() as i64, 1]); // [S, hidden]
    Ok(one.unsqueeze(0).expand([batch, -1, -1], false))
}

/// Runs the summary slots of `layout` over `prefix` (a cache of exactly `layout.prefix_len`
/// slots, `[b, kv_heads, P, d]` per layer, all visible) and returns the compressed cache: the
/// `S` summary slots then the `window` most recent raw slots (`[b, kv_heads, S + window, d]`,
/// positions strictly increasing), with `seq_len = P`. Differentiable in `prefix` and
/// `embeddings` when grad is on.
pub fn summarize(
    model: &Llama,
    prefix: &KvCache,
    embeddings: &Tensor,
    layout: &SummaryLayout,
) -> Result<KvCache> {
    let p = layout.prefix_len;
    let Some(first) = prefix.layers.first() else {
        return Err(Error::invalid("summarize: the prefix cache is empty"));
    };
    if first.slots() != prefix.seq_len {
        return Err(Error::invalid(format!(
            "summary slots are computed from an uncompressed prefill, but this cache holds {} \
             slots for {} tokens (already compressed)",
            first.slots(),
            prefix.seq_len
        )));
    }
    if prefix.seq_len != p {
        return Err(Error::invalid(format!(
            "summarize: the cache holds {} tokens, the layout was made for {p}",
            prefix.seq_len
        )));
    }
    if prefix
        .layers
        .iter()
        .any(|l| l.keep.is_some() || l.bias.is_some())
    {
        return Err(Error::invalid(
            "summarize: the prefix cache must be a plain prefill (no keep mask or bias)",
        ));
    }
    let b = first.k.size()[0];
    let s = layout.summary_slots();
    let mut work = prefix.prefix(p);
    let bias = layout.bias(model.kind(), model.device());
    let biases: Vec<Tensor> = (0..model.layers.len())
        .map(|_| bias.shallow_clone())
        .collect();
    let x = summary_inputs(embeddings, layout, b)?;
    let positions = layout.positions(model.device());
    model.forward_embeds_at(
        &x,
        &positions,
        &mut work,
        &ForwardOptions {
            layer_bias: Some(&biases),
            logits: Logits::None,
            ..Default::default()
        },
    )?;
    let dev = model.device();
    let index = Tensor::cat(
        &[
            Tensor::arange_start(p, p + s, (Kind::Int64, dev)),
            Tensor::arange_start(p - layout.window, p, (Kind::Int64, dev)),
        ],
        0,
    );
    Ok(KvCache {
        layers: work
            .layers
            .iter()
            .map(|l| LayerCache {
                k: l.k.index_select(2, &index),
                v: l.v.index_select(2, &index),
                positions: l.positions.index_select(2, &index),
                keep: None,
                bias: None,
            })
            .collect(),
        seq_len: p,
    })
}

/// The summary embeddings and chunk length a checkpoint learned with the `gist` policy, from
/// [`Llama::learned`]; a clear error when the model was not trained with it.
pub fn learned_summary(model: &Llama) -> Result<(Tensor, i64)> {
    let (Some(emb), Some(chunk)) = (model.learned.get(EMBEDDINGS), model.learned.get(CHUNK_LEN))
    else {
        return Err(Error::invalid(format!(
            "this model has no learned summary slots (`{EMBEDDINGS}` and `{CHUNK_LEN}` in its \
             checkpoint's policy.safetensors): the `gist` compressor needs a checkpoint trained \
             with the `gist` policy"
        )));
    };
    let chunk_len = chunk.double_value(&[0]).round() as i64;
    Ok((emb.to_kind(model.kind()), chunk_len))
}

/// Attaches summary embeddings (`[max_per_chunk, hidden]`) and their chunk length to `model`,
/// as loading a `gist` checkpoint does.
pub fn attach_summary(model: &mut Llama, embeddings: Tensor, chunk_len: i64) {
    let chunk = Tensor::from_slice(&[chunk_len as f32]).to_device(model.device());
    model.learned.insert(EMBEDDINGS.into(), embeddings);
    model.learned.insert(CHUNK_LEN.into(), chunk);
}
