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
use anyhow::Context;
use kvcat_core::Tokenizer;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One synthetic sequence of exactly `seq_len` token ids, deterministic in `seed`.
pub fn kv_recall(tok: &Tokenizer, seq_len: usize, seed: u64) -> anyhow::Result<Vec<i64>> {
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

/// Mixed into the seed of task-drawn training examples ("kvcat-tr").
const TRAIN_SEED_STREAM: u64 = 0x6b76_6361_742d_7472;

/// `count` rows of exactly `seq_len` ids, each packing consecutive examples of a registered
/// task (context, question, answer; separated by a blank line) and cut at `seq_len`.
/// Deterministic in `seed`, and drawn from a different example stream than evaluation
/// with the same seed.
pub fn from_task(
    task: &SyntheticTask,
    tok: &Tokenizer,
    seq_len: usize,
    count: usize,
    seed: u64,
) -> anyhow::Result<Vec<Vec<i64>>> {
    let built = kvcat_core::task::build_task(&task.name, &task.params)
        .context("field `data.synthetic_task`")?;
    // Training examples come from their own seed stream, so a run seeded like its
    // evaluation (the usual case) never trains on the evaluated examples.
    let seed = seed ^ TRAIN_SEED_STREAM;
    // Each row starts at an example boundary; most rows hold one or two examples.
    let mut n = count * 2;
    loop {
        let texts = built
            .training_texts(tok, n, seed)
            .with_context(|| format!("generating `{}` training text", task.name))?;
        let mut rows = Vec::with_capacity(count);
        let mut pending: Vec<i64> = Vec::new();
        for text in &texts {
            pending.extend(tok.encode(&format!("{text}\n\n"))?);
            if pending.len() >= seq_len {
                rows.push(pending[..seq_len].to_vec());
                pending.clear();
                if rows.len() == count {
                    return Ok(rows);
                }
            }
        }
        n *= 2;
    }
}
