//! Synthetic key-value retrieval sequences, mixed into training so that tiny models learn to
//! retrieve from their context at all (the skill KV compression then stresses).
//!
//! A sequence lists random records `key <id>: <value>.` and then asks for earlier ones,
//! `recall <id>: <value>.`, repeatedly, until it fills `seq_len` tokens. With a prefix/
//! continuation split, most queries in the continuation point into the prefix, so answering
//! them needs the kept prefix slots.
//!
//! [`from_task`] instead packs the examples of any registered evaluation task, so that a model
//! trains on exactly the format it is later evaluated on.

use super::config::SyntheticTask;
use kvcat_core::error::ResultExt;
use kvcat_core::task::TrainingRow;
use kvcat_core::{Result, Tokenizer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One synthetic sequence of exactly `seq_len` token ids, deterministic in `seed`.
pub fn kv_recall(tok: &Tokenizer, seq_len: usize, seed: u64) -> Result<Vec<i64>> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5157_4e54_4845_5449);
    let mut records: Vec<(String, u32)> = Vec::new();
    let mut text = String::from("Records:\n");
    // Records fill about half of the sequence, queries the rest.
    loop {
        let key: String = (0..3)
            .map(|_| (b'a' + rng.random_range(0..26u8)) as char)
            .collect();
        let value = rng.random_range(100..1000u32);
        let line = format!("key {key}: {value}.\n");
        text.push_str(&line);
        records.push((key, value));
        if tok.encode(&text)?.len() * 2 >= seq_len {
            break;
        }
    }
    text.push_str("Questions:\n");
    let mut ids = tok.encode(&text)?;
    while ids.len() < seq_len {
        for _ in 0..8 {
            let (k, v) = &records[rng.random_range(0..records.len())];
            text.push_str(&format!("recall {k}: {v}.\n"));
        }
        ids = tok.encode(&text)?;
    }
    ids.truncate(seq_len);
    Ok(ids)
}

/// Mixed into the seed of every synthetic training row ("kvcat-tr"), so that rows never share a
/// generator with the evaluated examples of a task (`example_rng(seed, index)`).
pub const TRAIN_SEED_STREAM: u64 = 0x6b76_6361_742d_7472;

/// Where synthetic rows come from.
pub enum SyntheticSource {
    /// A registered evaluation task, rendered by its [`kvcat_core::task::Task::training_row`].
    Task(Box<dyn kvcat_core::task::Task>),
    /// The built-in key-value recall generator ([`kv_recall`]).
    KvRecall,
}

impl SyntheticSource {
    /// The task named in `data.synthetic_task`, or the built-in generator when absent.
    pub fn new(task: Option<&SyntheticTask>) -> Result<SyntheticSource> {
        match task {
            Some(t) => Ok(SyntheticSource::Task(
                kvcat_core::task::build_task(&t.name, &t.params)
                    .context("field `data.synthetic_task`")?,
            )),
            None => Ok(SyntheticSource::KvRecall),
        }
    }

    /// One row of exactly `seq_len` ids for the row seed `row_seed` (already mixed with
    /// [`TRAIN_SEED_STREAM`] by the caller); `pad` fills rows that whole examples leave short.
    pub fn row(
        &self,
        tok: &Tokenizer,
        seq_len: usize,
        row_seed: u64,
        pad: i64,
    ) -> Result<TrainingRow> {
        match self {
            SyntheticSource::Task(task) => task
                .training_row(tok, seq_len, row_seed, pad)
                .with_context(|| format!("generating `{}` training rows", task.name())),
            SyntheticSource::KvRecall => Ok(TrainingRow::dense(kv_recall(tok, seq_len, row_seed)?)),
        }
    }
}

/// `count` rows of exactly `seq_len` ids drawn from `task` with row seeds `0..count` of the
/// training stream of `seed` (what a fixed pool of `count` rows holds; the trainer draws a
/// fresh seed per row instead). Deterministic in `seed`.
pub fn from_task(
    task: &SyntheticTask,
    tok: &Tokenizer,
    seq_len: usize,
    count: usize,
    seed: u64,
) -> Result<Vec<Vec<i64>>> {
    let source = SyntheticSource::new(Some(task))?;
    let pad = tok
        .token_id("\n")
        .or_else(|| tok.encode("\n").ok()?.first().copied())
        .unwrap_or(0);
    (0..count as u64)
        .map(|i| Ok(source.row(tok, seq_len, row_seed(seed, i), pad)?.ids))
        .collect()
}

/// The seed of synthetic row `i` of the training stream of `seed`.
pub fn row_seed(seed: u64, i: u64) -> u64 {
    (seed ^ TRAIN_SEED_STREAM)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(i.wrapping_mul(0xC2B2_AE3D_27D4_EB4F))
}
