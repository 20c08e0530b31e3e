//! Synthetic rows drawn fresh per step, against a small fixed pool of rows (what the trainer
//! drew from before). On the pool a tiny model memorises the rows: its training loss on the
//! retrieval targets collapses far below what retrieval from the context alone allows at this
//! training length. With fresh rows there is nothing to memorise. Both runs see the same
//! number of rows of the same format (`mqar`, token level, only query values scored).
//!
//! What this does *not* show is retrieval itself: at this scale neither run answers fresh
//! examples above chance (see `docs/benchmarks/evidence.md` for the longer runs).

use kvcat_bench::evaluate::{evaluate_examples, prepare, EvalOptions};
use kvcat_bench::train::{train, TrainConfig, TrainRunOptions};
use kvcat_core::task::build_task;
use kvcat_core::{Budget, LlamaConfig, Model};
use kvcat_policies as _;
use std::path::{Path, PathBuf};
use tch::{Device, Kind};

/// Words of the generated corpus: frequent enough that the tokenizer learns each as a token.
const WORDS: [&str; 48] = [
    "the", "king", "queen", "lord", "lady", "love", "good", "sir", "night", "day", "sword",
    "crown", "heart", "blood", "death", "life", "war", "peace", "gold", "fire", "water", "stone",
    "horse", "house", "field", "river", "tower", "gate", "bread", "wine", "ship", "sea", "star",
    "moon", "sun", "rain", "wind", "snow", "tree", "rose", "bird", "wolf", "bear", "deer", "fox",
    "lion", "hawk", "dove",
];

fn scratch_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kvcat-retrieval-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A pseudo-English corpus in which every word of [`WORDS`] is frequent.
fn corpus(dir: &Path) -> PathBuf {
    let mut s = String::new();
    let mut z: u64 = 7;
    for _ in 0..3000 {
        for _ in 0..8 {
            z = z
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            s.push(' ');
            s.push_str(WORDS[(z >> 33) as usize % WORDS.len()]);
        }
        s.push_str(".\n");
    }
    let p = dir.join("corpus.txt");
    std::fs::write(&p, s).unwrap();
    p
}

fn mqar_params() -> toml::Table {
    toml::from_str("format = \"tokens\"\ncontext_len = 30\nnum_queries = 1\nmin_train_pairs = 2")
        .unwrap()
}

fn config(dir: &Path, pool: Option<usize>) -> TrainConfig {
    let mut c = TrainConfig::default();
    c.model.config = Some(LlamaConfig {
        vocab_size: 640,
        hidden_size: 64,
        intermediate_size: 128,
        head_dim: 16,
        max_position_embeddings: 128,
        ..LlamaConfig::tiny()
    });
    c.data.corpora = vec![corpus(dir).display().to_string()];
    c.data.cache_dir = Some(dir.join("cache"));
    c.data.synthetic_fraction = 1.0;
    c.data.synthetic_task = Some(kvcat_bench::train::config::SyntheticTask {
        name: "mqar".into(),
        params: mqar_params(),
    });
    c.data.synthetic_pool = pool;
    c.batch_size = 16;
    c.seq_len = 64;
    c.steps = 200;
    c.optim.lr = 3e-3;
    c.optim.warmup = 20;
    c.loss.w_mask = 0.0;
    c.loss.w_full = 1.0;
    c.eval.sequences = 4;
    c
}

/// Mean training loss (nats per scored token) over the last `k` logged steps of a run.
fn final_loss(out: &Path, k: usize) -> f64 {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let losses: Vec<f64> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get("loss").and_then(|x| x.as_f64()))
        .collect();
    assert!(losses.len() >= k, "only {} logged steps", losses.len());
    losses[losses.len() - k..].iter().sum::<f64>() / k as f64
}

#[test]
fn a_fixed_pool_is_memorised_where_fresh_rows_are_not() {
    let fresh_dir = scratch_dir("fresh");
    train(
        &config(&fresh_dir, None),
        &fresh_dir.join("out"),
        &TrainRunOptions::default(),
    )
    .unwrap();
    let pool_dir = scratch_dir("pool");
    train(
        &config(&pool_dir, Some(8)),
        &pool_dir.join("out"),
        &TrainRunOptions::default(),
    )
    .unwrap();
    let fresh = final_loss(&fresh_dir.join("out"), 20);
    let pooled = final_loss(&pool_dir.join("out"), 20);
    let (acc_fresh, acc_pool) = (
        accuracy(&fresh_dir.join("out")),
        accuracy(&pool_dir.join("out")),
    );
    eprintln!(
        "final training loss on query values: fresh rows {fresh:.3}, pool of 8 rows {pooled:.3}; \
         uncompressed mqar accuracy on fresh examples: {acc_fresh:.3} vs {acc_pool:.3}"
    );
    // The pool's rows are learnt by heart; fresh rows cannot be.
    assert!(pooled < 0.5 * fresh, "pool {pooled} vs fresh {fresh}");
    // Memorised rows do not transfer to unseen examples.
    assert!(acc_pool <= 0.25, "pool accuracy {acc_pool}");
    let _ = std::fs::remove_dir_all(&fresh_dir);
    let _ = std::fs::remove_dir_all(&pool_dir);
}

/// Uncompressed `mqar` accuracy of the checkpoint in `out` on 48 fresh examples.
fn accuracy(out: &Path) -> f64 {
    let m = Model::load(out, Device::Cpu, Kind::Float).unwrap();
    let tok = m
        .tokenizer
        .clone()
        .expect("the checkpoint has its tokenizer");
    let task = build_task("mqar", &mqar_params()).unwrap();
    let examples = task.examples(&tok, 48, 11).unwrap();
    let opts = EvalOptions::default();
    let prepared = prepare(&m.net, &tok, &examples, &opts).unwrap();
    let r = evaluate_examples(&m.net, &tok, &prepared, None, Budget::full(), &opts).unwrap();
    r.metric("string_match_all").unwrap().mean
}
