//! kvcat-policies: train-time KV masking policies for KV-CAT, registered as plugins.
//!
//! Each policy lives in its own module and registers a [`kvcat_core::PolicyDescriptor`] with
//! `inventory`. A policy receives the batch, the sampled split `P` and per-head budget `kept`,
//! and the captures of the unmasked no-gradient teacher pass; it returns a
//! [`kvcat_core::MaskPlan`]: per layer, a `[b, kv_heads, P]` keep mask over prefix slots for
//! the continuation queries (and, for learned policies, a differentiable soft bias).
//!
//! | name | method |
//! |---|---|
//! | `none` | keeps every prefix slot (plain continued pretraining, the baseline) |
//! | `rand` | RAND: a uniformly random subset per layer and KV head |
//! | `attn` | ATTN: the slots with the highest attention mass from the continuation queries |
//! | `attention_matching` | OMP selection of the slots whose (re-weighted) attention best reproduces the continuation queries' prefix attention output (Zweiger et al., 2026) |
//! | `router` | a learned per-layer linear scorer on keys or hidden states, straight-through / log-utility relaxation of top-b |
//! | `gist` | learned summary slots per prefix chunk (gist tokens, Activation Beacon): continuation queries see the summaries plus a recent window; summary slots count as kept ([`kvcat_core::summary`]) |
//! | `sink_window` | attention sinks plus the most recent prefix slots (StreamingLLM-style) |
//! | `scorer` | the slots any registered eviction scorer (`knorm`, `snapkv`, …) keeps: training for the compressor of that name, with the same top-k ([`kvcat_core::selection`]) |

pub mod attention_matching;
pub mod attn;
pub mod gist;
pub mod none;
pub mod rand_policy;
pub mod router;
pub mod scorer;
pub mod sink_window;
pub mod util;

/// The names of the policies this crate registers (checked by the registry tests).
pub const POLICY_NAMES: &[&str] = &[
    "attention_matching",
    "attn",
    "gist",
    "none",
    "rand",
    "router",
    "scorer",
    "sink_window",
];
