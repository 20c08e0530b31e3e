//! StreamingLLM: keep the first `n_sink` positions (attention sinks) and the most recent ones.
//!
//! Xiao et al., 2024, "Efficient Streaming Language Models with Attention Sinks"
//! (arXiv:2309.17453). kvpress `StreamingLLMPress` (no key re-rotation).
//!
//! Shapes: positions `[b, kv_heads, slots]` → scores `[b, kv_heads, slots]`: sinks score above
//! every other slot, the rest score their position (recent = high). A budget that keeps fewer
//! than `n_sink` slots is an error.

use kvcat_core::{CompressionInput, Error, Result, Scorer};
use serde::{Deserialize, Serialize};
use tch::Kind;

/// Parameters of `streaming_llm` (kvpress defaults).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamingLlmParams {
    /// Initial positions always kept.
    pub n_sink: i64,
}

impl Default for StreamingLlmParams {
    fn default() -> Self {
        StreamingLlmParams { n_sink: 4 }
    }
}

/// The sinks-plus-window scorer.
pub struct StreamingLlm {
    params: StreamingLlmParams,
}

impl StreamingLlm {
    pub fn new(params: StreamingLlmParams) -> Result<Self> {
        if params.n_sink < 0 {
            return Err(Error::Params {
                kind: "compressor",
                name: "streaming_llm".into(),
                reason: format!("n_sink must be ≥ 0, got {}", params.n_sink),
            });
        }
        Ok(StreamingLlm { params })
    }
}

impl Scorer for StreamingLlm {
    fn name(&self) -> &'static str {
        "streaming_llm"
    }
    fn params(&self) -> toml::Table {
        kvcat_core::registry::to_table(&self.params)
    }
    fn score(&self, input: &CompressionInput, layer: usize) -> Result<tch::Tensor> {
        let l = super::layer(input, layer)?;
        let n_sink = self.params.n_sink;
        super::check_protected("streaming_llm", input, l.slots(), n_sink, "n_sink")?;
        let pos = l.positions.to_kind(Kind::Float);
        let sinks = l.positions.lt(n_sink);
        Ok(super::protect(&pos, &sinks))
    }
}

crate::register_scorer!(
    StreamingLlm,
    StreamingLlmParams,
    "streaming_llm",
    "keep n_sink attention sinks plus the most recent slots (Xiao et al. 2024; kvpress StreamingLLMPress)"
);
