//! kvcat-compressors: post-hoc KV-cache compressors, registered as plugins.
//!
//! Families: `eviction` (score → top-k per KV head), `summarization`, `fitting`, plus
//! `wrappers` that change how an inner scorer's budget is spent.

pub mod eviction;
pub mod fitting;
pub mod summarization;
pub mod topk;
pub mod wrappers;
