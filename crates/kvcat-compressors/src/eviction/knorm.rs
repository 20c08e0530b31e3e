//! Key-norm eviction: keep the slots whose keys have the *smallest* L2 norm. Devoto et al.,
//! 2024, "A Simple and Effective L2 Norm-Based Strategy for KV Cache Compression"
//! (arXiv:2406.11430); kvpress `KnormPress`.
//!
//! Shapes: keys `[b, kv_heads, slots, d]` → scores `−‖k‖₂` `[b, kv_heads, slots]` (f32).

crate::scorer!(
    /// The key-norm scorer (no parameters).
    Knorm,
    "knorm",
    "keep the keys with the smallest L2 norm (Devoto et al. 2024; kvpress KnormPress)",
    |input, layer| {
        let k = super::layer(input, layer)?.k.to_kind(tch::Kind::Float);
        Ok(-k.norm_scalaropt_dim(2, [-1], false))
    }
);
