//! KV-CAT training (`kvcat train`): continued pretraining under a KV masking policy, or
//! pretraining a tiny model from scratch.
//!
//! - [`config`]: [`TrainConfig`] (TOML, `deny_unknown_fields`), validation, content hash;
//! - [`corpus`], [`tokenizer`], [`data`], [`synthetic`]: documents, byte-level BPE, cached
//!   packed token streams, synthetic retrieval sequences;
//! - [`schedule`]: learning rate, budget and split sampling, per-step generators;
//! - [`loss`]: masked NTP + distillation + full NTP;
//! - [`optim`]: AdamW with saveable state, [`cpu_loops`]: its one-pass CPU loops;
//! - [`checkpoint`]: HF-style checkpoint directories with training state;
//! - [`trainer`]: the loop, [`train`].

pub mod checkpoint;
pub mod config;
pub mod corpus;
pub mod cpu_loops;
pub mod data;
pub mod loss;
pub mod optim;
pub mod schedule;
pub mod synthetic;
pub mod tokenizer;
pub mod trainer;

pub use checkpoint::{EvalRecord, TrainerState};
pub use config::{
    BudgetSchedule, DataConfig, EvalConfig, LossConfig, ModelConfig, OptimConfig, PolicyConfig,
    SplitConfig, TeacherChoice, TokenizerConfig, TrainConfig,
};
#[allow(deprecated)]
pub use trainer::{evaluate, heldout_loss, train, StepLog, TrainRunOptions, TrainSummary};
