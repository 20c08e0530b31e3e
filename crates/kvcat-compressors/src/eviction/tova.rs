//! TOVA: score slots by the attention of the last context query, averaged over all query
//! heads; the last slot is always kept. Oren et al., 2024, "Transformers are Multi-State RNNs"
//! (arXiv:2401.06104); kvpress `TOVAPress`.
//!
//! Shapes: last query `[b, heads, 1, d]` over keys `[b, kv_heads, slots, d]` → probabilities
//! `[b, heads, slots]` → mean over *all* heads `[b, slots]` → repeated per KV head
//! `[b, kv_heads, slots]`; the last position scores max + 1.

use super::{layer, protect, snapkv::window_attention};
use tch::Kind;

crate::scorer!(
    /// The TOVA scorer (no parameters).
    Tova,
    "tova",
    "keep the slots the last query attends to, averaged over heads (Oren et al. 2024; kvpress TOVAPress)",
    |input, layer_idx| {
        let l = layer(input, layer_idx)?;
        let a = window_attention("tova", input, layer_idx, 1)?; // [b, heads, s]
        let last = l.positions.ge(input.cache.seq_len - 1);
        let kvh = l.k.size()[1];
        let mean = a.mean_dim(1, true, Kind::Float).expand([-1, kvh, -1], false);
        Ok(protect(&mean.contiguous().masked_fill(&last, 0.0), &last))
    }
);
