//! Summarization compressors: fewer slots that *summarize* the evicted ones rather than drop
//! them.
//!
//! - [`kv_merge`]: evicted slots are folded into their most similar kept slot (cosine on keys),
//!   weighted by attention mass.
//! - [`chunk_mean`]: adjacent slots are pooled into one.
//! - [`gist`]: the summary slots a checkpoint learned with the `gist` policy, run over the
//!   prefix (gist tokens / Activation Beacon).
//! - [`prompt_lingua`]: token-level summarization of the *text* (LLMLingua-style self-information
//!   pruning), then a re-prefill of the kept tokens.
//!
//! [`pool`] holds the shared slot pooling: a many-to-one assignment of slots to `t` groups,
//! weighted means of keys and values per group, and an optional `log(group size)` bias
//! (proportional attention, Bolya et al. 2023, "Token Merging: Your ViT But Faster").

pub mod chunk_mean;
pub mod gist;
pub mod kv_merge;
pub mod pool;
pub mod prompt_lingua;
