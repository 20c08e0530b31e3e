//! KVzip: query-agnostic importance from context reconstruction. The model is asked to repeat
//! the context after seeing it; a slot's score is the largest attention any reconstruction
//! query pays it. Slots are then kept by a top-k over all layers and heads at once (or per
//! layer with `layerwise = true`), so layers and heads keep different counts.
//!
//! Kim et al., 2025, "KVzip: Query-Agnostic KV Cache Compression with Context Reconstruction"
//! (arXiv:2505.23416). kvpress `KVzipPress` (defaults: `layerwise = false`, `n_sink = 4`,
//! `chunk_size = 2048`, previous-chunk postfix of 8 tokens).
//!
//! Shapes, per chunk `[start, end)` of the context (length `t`):
//! repeat ids `instruction ++ (previous 8 context ids, after the first chunk) ++ chunk`
//! `[1, r]` are run after the full cache at positions `t .. t + r`; per layer, their queries
//! `[1, heads, r, d]` attend (causal among themselves) over `sinks ++ chunk slots ++ repeat
//! keys` → probabilities `[1, heads, r, n_sink + len + r]` → chunk columns, max over each KV
//! head's group and the `r` queries → scores `[1, kv_heads, len]`. Sinks score max + 1.
//!
//! kvcat's `CompressionInput` has no tokenizer, so the repeat instruction (kvpress:
//! "Repeat the previous context exactly.") is given as token ids in `instruction_ids`; empty
//! (the default) repeats the context with no instruction.

use super::check_protected;
use crate::topk::select_mask;
use kvcat_core::model::{ForwardOptions, Logits};
use kvcat_core::registry::to_table;
use kvcat_core::{probe, Compressed, CompressionInput, Compressor, Error, KvCache, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Parameters of `kvzip` (kvpress defaults where kvpress has them).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KvzipParams {
    /// Per-layer budgets (top-k across the heads of each layer) instead of one top-k over all
    /// layers and heads.
    pub layerwise: bool,
    /// Initial positions always kept.
    pub n_sink: i64,
    /// Context tokens reconstructed per repeat pass.
    pub chunk_size: i64,
    /// Token ids of the repeat instruction, placed before the repeated context.
    pub instruction_ids: Vec<i64>,
}

impl Default for KvzipParams {
    fn default() -> Self {
        KvzipParams {
            layerwise: false,
            n_sink: 4,
            chunk_size: 2048,
            instruction_ids: vec![],
        }
    }
}

/// The KVzip compressor.
pub struct Kvzip {
    params: KvzipParams,
}

const PREV_POSTFIX: i64 = 8;

impl Kvzip {
    pub fn new(params: KvzipParams) -> Result<Self> {
        if params.chunk_size < 1 || params.n_sink < 0 {
            return Err(Error::Params {
                kind: "compressor",
                name: "kvzip".into(),
                reason: format!(
                    "chunk_size must be ≥ 1 and n_sink ≥ 0, got {} and {}",
                    params.chunk_size, params.n_sink
                ),
            });
        }
        Ok(Kvzip { params })
    }

    /// Reconstruction scores `[1, kv_heads, t]` per layer.
    pub fn reconstruction_scores(&self, input: &CompressionInput) -> Result<Vec<Tensor>> {
        let model = input.model;
        let cache = input.cache;
        let t = cache.seq_len;
        let device = model.device();
        let context = input.context.to_device(device);
        let scores: Vec<Tensor> = cache
            .layers
            .iter()
            .map(|l| Tensor::zeros([1, l.k.size()[1], t], (Kind::Float, device)))
            .collect();
        let instruction = Tensor::from_slice(&self.params.instruction_ids)
            .view([1, -1])
            .to_device(device);
        let mut start = 0;
        while start < t {
            let len = self.params.chunk_size.min(t - start);
            let mut parts = vec![instruction.shallow_clone()];
            if start > 0 {
                let p = PREV_POSTFIX.min(start);
                parts.push(context.narrow(1, start - p, p));
            }
            parts.push(context.narrow(1, start, len));
            let repeat = Tensor::cat(&parts, 1);
            let r = repeat.size()[1];
            let mut c = cache.copy();
            let out = model.forward_with(
                &repeat,
                &mut c,
                &ForwardOptions {
                    capture_hidden: true,
                    logits: Logits::None,
                    ..Default::default()
                },
            )?;
            let sink = self.params.n_sink.min(start);
            for (l, layer) in c.layers.iter().enumerate() {
                let attn = &model.layers[l].self_attn;
                let q = probe::queries_at(model, l, &out.hidden[l], 0, r, t)?.to_kind(Kind::Float); // [1, H, r, d]
                let keys = Tensor::cat(
                    &[
                        layer.k.narrow(2, 0, sink),
                        layer.k.narrow(2, start, len),
                        layer.k.narrow(2, t, r),
                    ],
                    2,
                );
                let keys = attn.expand_kv(&keys).to_kind(Kind::Float);
                let mut logits = q.matmul(&keys.transpose(-2, -1)) / (attn.head_dim as f64).sqrt();
                let causal = kvcat_core::attention::causal_mask(r, sink + len, Kind::Float, device);
                logits += causal;
                let probs = logits.softmax(-1, Kind::Float).narrow(-1, sink, len); // [1,H,r,len]
                let kvh = attn.num_kv_heads;
                let best = probs
                    .view([1, kvh, attn.groups() * r, len])
                    .amax([2], false); // [1, kv, len]
                scores[l].narrow(2, start, len).copy_(&best);
            }
            start += len;
        }
        Ok(scores)
    }
}

impl Compressor for Kvzip {
    fn name(&self) -> &'static str {
        "kvzip"
    }
    fn params(&self) -> toml::Table {
        to_table(&self.params)
    }
    fn compress(&self, input: &CompressionInput) -> Result<Compressed> {
        let _g = tch::no_grad_guard();
        let cache = input.cache;
        let t = cache.seq_len;
        if cache
            .layers
            .iter()
            .any(|l| l.slots() != t || l.keep.is_some())
        {
            return Err(Error::invalid(
                "`kvzip` needs an uncompressed prefill (every layer holding all context slots)",
            ));
        }
        if input.context.size().first() != Some(&1) {
            return Err(Error::invalid(format!(
                "`kvzip` supports batch size 1, got context shape {:?}",
                input.context.size()
            )));
        }
        if input.budget.is_identity_for(t) {
            return Ok(Compressed {
                cache: cache.copy(),
                extra: vec![],
            });
        }
        check_protected("kvzip", input, t, self.params.n_sink, "n_sink")?;
        let kept = input.budget.kept(t);
        let scores = Tensor::stack(&self.reconstruction_scores(input)?, 0); // [L, 1, kv, t]
        let sinks = Tensor::arange(t, (Kind::Int64, scores.device()))
            .lt(self.params.n_sink)
            .view([1, 1, 1, t]);
        let top = scores.max().double_value(&[]);
        let scores = scores.masked_fill(&sinks, top + 1.0);
        let s = scores.size();
        let (n_layers, kvh) = (s[0], s[2]);
        let mask = if self.params.layerwise {
            let flat = scores.view([n_layers, kvh * t]);
            let (_, idx) = flat.topk(kvh * kept, -1, true, false);
            flat.zeros_like()
                .to_kind(Kind::Bool)
                .scatter_value(-1, &idx, 1)
        } else {
            let flat = scores.view([-1]);
            let (_, idx) = flat.topk(n_layers * kvh * kept, -1, true, false);
            flat.zeros_like()
                .to_kind(Kind::Bool)
                .scatter_value(-1, &idx, 1)
        }
        .view([n_layers, 1, kvh, t]);
        let layers = cache
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| select_mask(l, &mask.get(i as i64)))
            .collect();
        Ok(Compressed {
            cache: KvCache { layers, seq_len: t },
            extra: vec![],
        })
    }
}

kvcat_core::register!(
    dyn Compressor,
    "kvzip",
    "query-agnostic importance from a repeat-the-context pass, top-k over all layers and heads (Kim et al. 2025; kvpress KVzipPress)",
    KvzipParams,
    |params| Kvzip::new(params)
);
