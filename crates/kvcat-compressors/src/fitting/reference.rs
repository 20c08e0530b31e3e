//! Reference queries for fitting: a "repeat the context" prefill (Zweiger et al. 2026).
//!
//! The model reads `[context, instruction, context]`; the queries it issues over the *second*
//! copy of the context look back at every position of the first one, which is what a later
//! question will do. Since the first copy is already in the cache, only the suffix
//! `[instruction, context (, question)]` is run, at positions `T, T+1, …` after the cache.
//!
//! [`RepeatProbe`] steps through the layers one at a time, so that a caller can replace a
//! layer's cache by its compacted version before the suffix moves on to the next layer
//! ("layer-by-layer": later layers then see the compacted earlier ones).

use kvcat_core::attention::{rope_tables, AttentionCapture};
use kvcat_core::{probe, CompressionInput, Error, LayerCache, Llama, Result};
use tch::{Kind, Tensor};

/// The suffix's hidden state, one layer at a time.
pub struct RepeatProbe<'a> {
    model: &'a Llama,
    /// Suffix hidden states entering layer `self.layer`: `[b, u, hidden]`.
    x: Tensor,
    positions: Tensor,
    cos: Tensor,
    sin: Tensor,
    /// Which suffix rows are reference queries: `(start, len)` ranges.
    ranges: Vec<(i64, i64)>,
    layer: usize,
}

impl<'a> RepeatProbe<'a> {
    /// Builds the suffix `[instruction, context, question?]` for `context` `[b, T]` after a
    /// cache of `seq_len` tokens. The repeated context (and the question, if given) are the
    /// reference rows.
    pub fn new(
        model: &'a Llama,
        context: &Tensor,
        instruction: &[i64],
        question: Option<&Tensor>,
        seq_len: i64,
    ) -> Result<Self> {
        let cs = context.size();
        if cs.len() != 2 {
            return Err(Error::invalid(format!(
                "reference queries: context must be [b, t], got {cs:?}"
            )));
        }
        let (b, t) = (cs[0], cs[1]);
        let device = model.device();
        let context = context.to_device(device).to_kind(Kind::Int64);
        let mut parts = Vec::new();
        let n_instr = instruction.len() as i64;
        if n_instr > 0 {
            let instr = Tensor::from_slice(instruction)
                .to_device(device)
                .view([1, n_instr])
                .expand([b, n_instr], false);
            parts.push(instr);
        }
        parts.push(context.shallow_clone());
        let mut ranges = vec![(n_instr, t)];
        if let Some(qn) = question {
            let qn = qn.to_device(device).to_kind(Kind::Int64);
            ranges.push((n_instr + t, qn.size()[1]));
            parts.push(qn);
        }
        let tokens = Tensor::cat(&parts, 1);
        model.check_tokens(&tokens)?;
        let u = tokens.size()[1];
        let positions = Tensor::arange_start(seq_len, seq_len + u, (Kind::Int64, device));
        let (cos, sin) = rope_tables(
            &positions,
            model.config.head_dim,
            model.config.rope_theta,
            model.kind(),
        );
        let x = Tensor::embedding(&model.embed_tokens, &tokens, -1, false, false);
        Ok(RepeatProbe {
            model,
            x,
            positions,
            cos,
            sin,
            ranges,
            layer: 0,
        })
    }

    /// The layer the probe is at.
    pub fn layer(&self) -> usize {
        self.layer
    }

    /// Post-RoPE reference queries of the current layer: `[b, heads, n, head_dim]` (the repeated
    /// context, then the question if any), in the model dtype.
    pub fn queries(&self) -> Tensor {
        let _g = tch::no_grad_guard();
        let l = &self.model.layers[self.layer];
        let h = l.input_layernorm.forward(&self.x);
        let (q, _, _) = l.self_attn.project(&h, (&self.cos, &self.sin));
        let parts: Vec<Tensor> = self
            .ranges
            .iter()
            .map(|&(s, n)| q.narrow(2, s, n))
            .collect();
        Tensor::cat(&parts, 2)
    }

    /// Runs the suffix through the current layer, attending to `cache` (that layer's original
    /// or compacted cache, which is not modified), and moves to the next layer.
    pub fn advance(&mut self, cache: &LayerCache) -> Result<()> {
        let _g = tch::no_grad_guard();
        let l = &self.model.layers[self.layer];
        let mut c = cache.copy();
        let h = l.input_layernorm.forward(&self.x);
        let (attn, _, _) = l.self_attn.forward(
            &h,
            Some(&mut c),
            &self.positions,
            (&self.cos, &self.sin),
            None,
            AttentionCapture::default(),
        )?;
        let x = &self.x + attn;
        self.x = &x + l.mlp.forward(&l.post_attention_layernorm.forward(&x));
        self.layer += 1;
        Ok(())
    }
}

/// Picks at most `max` of `n` rows, evenly spaced (deterministic). Returns `[m]` int64 indices.
pub fn spread(n: i64, max: i64, device: tch::Device) -> Tensor {
    if max <= 0 || n <= max {
        return Tensor::arange(n, (Kind::Int64, device));
    }
    Tensor::linspace(0.0, (n - 1) as f64, max, (Kind::Double, device))
        .round()
        .to_kind(Kind::Int64)
}

/// Per KV head reference queries: `[b, heads, n, d]` → `[b, kv_heads, groups·n', d]`, where
/// the `n` rows of each query head are first thinned to `max_per_kv_head / groups` rows.
pub fn group_queries(q: &Tensor, kv_heads: i64, max_per_kv_head: i64) -> Tensor {
    let s = q.size();
    let (b, heads, n, d) = (s[0], s[1], s[2], s[3]);
    let g = heads / kv_heads;
    let per = if max_per_kv_head > 0 {
        (max_per_kv_head / g).max(1)
    } else {
        n
    };
    let idx = spread(n, per, q.device());
    let q = q.index_select(2, &idx);
    let m = q.size()[2];
    q.view([b, kv_heads, g * m, d])
}

/// Where the fitting compressors take their reference queries from (their shared params).
pub struct ReferenceSource<'p> {
    /// Token ids of the instruction between the context and its repetition.
    pub instruction_ids: &'p [i64],
    /// Also take queries from the question, when the compression is query-aware.
    pub question_queries: bool,
    /// Also take the context's own queries from the prefill.
    pub self_queries: bool,
    /// Cap on reference queries per KV head.
    pub max_queries: i64,
    /// Later layers see the fitted earlier layers (else the original ones).
    pub layer_by_layer: bool,
}

/// Fits a cache layer by layer: `fit(i, layer, refs)` returns layer `i` fitted to its
/// per-KV-head reference queries `refs` `[b, kv_heads, n, d]`. The repeat-the-context probe
/// then advances through the fitted layer (`layer_by_layer`) or the original one.
pub fn fit_layers(
    input: &CompressionInput,
    src: &ReferenceSource,
    mut fit: impl FnMut(usize, &LayerCache, &Tensor) -> Result<LayerCache>,
) -> Result<Vec<LayerCache>> {
    let cache = input.cache;
    let question = input.question.filter(|_| src.question_queries);
    let mut repeat = RepeatProbe::new(
        input.model,
        input.context,
        src.instruction_ids,
        question,
        cache.seq_len,
    )?;
    let mut layers = Vec::with_capacity(cache.layers.len());
    for (i, layer) in cache.layers.iter().enumerate() {
        let refs = layer_reference(input, &repeat, i, src.self_queries, src.max_queries)?;
        let fitted = fit(i, layer, &refs)?;
        if i + 1 < cache.layers.len() {
            repeat.advance(if src.layer_by_layer { &fitted } else { layer })?;
        }
        layers.push(fitted);
    }
    Ok(layers)
}

/// Reference queries of one layer per KV head, `[b, kv_heads, n, d]`, from the repeat probe
/// (and the context's own queries when asked).
fn layer_reference(
    input: &CompressionInput,
    probe_state: &RepeatProbe,
    layer: usize,
    self_queries: bool,
    max_queries: i64,
) -> Result<Tensor> {
    let mut q = probe_state.queries();
    if self_queries {
        let hidden = input.hidden.get(layer).ok_or_else(|| {
            Error::invalid(format!(
                "self_queries needs the prefill hidden states of layer {layer}, but \
                 CompressionInput.hidden has {} entries",
                input.hidden.len()
            ))
        })?;
        let t = hidden.size()[1];
        let own = probe::queries(input.model, layer, hidden, 0, t)?;
        q = Tensor::cat(&[q, own], 2);
    }
    let kvh = input.model.layers[layer].self_attn.num_kv_heads;
    Ok(group_queries(&q, kvh, max_queries))
}
