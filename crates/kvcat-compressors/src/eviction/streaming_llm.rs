//! StreamingLLM: keep the first `n_sink` positions (attention sinks) and the most recent ones.
//! Xiao et al., 2024, "Efficient Streaming Language Models with Attention Sinks"
//! (arXiv:2309.17453); kvpress `StreamingLLMPress` (no key re-rotation).
//!
//! Shapes: positions `[b, kv_heads, slots]` → scores `[b, kv_heads, slots]`: sinks score above
//! every other slot, the rest score their position (recent = high). A budget that keeps fewer
//! than `n_sink` slots is an error.

use super::{check_protected, layer, protect, ScorerParams};
use kvcat_core::{Error, Result};
use serde::{Deserialize, Serialize};

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

impl ScorerParams for StreamingLlmParams {
    fn check(&self) -> Result<()> {
        if self.n_sink < 0 {
            return Err(Error::Params {
                kind: "compressor",
                name: "streaming_llm".into(),
                reason: format!("n_sink must be ≥ 0, got {}", self.n_sink),
            });
        }
        Ok(())
    }
}

crate::scorer!(
    /// The sinks-plus-window scorer.
    StreamingLlm(StreamingLlmParams),
    "streaming_llm",
    "keep n_sink attention sinks plus the most recent slots (Xiao et al. 2024; kvpress StreamingLLMPress)",
    |s, input, layer_idx| {
        let l = layer(input, layer_idx)?;
        let n_sink = s.params.n_sink;
        check_protected("streaming_llm", input, l.slots(), n_sink, "n_sink")?;
        let sinks = l.positions.lt(n_sink);
        Ok(protect(&l.positions.to_kind(tch::Kind::Float), &sinks))
    }
);
