//! End to end on real pieces: a micro model pretrained from scratch, two KV-CAT
//! continuations, two compressors at two budgets, a retrieval task and compressed-prefix
//! perplexity; then the report; then a `kill -9` of the real binary mid-run and a resume
//! that yields the same rows.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use kvcat_compressors as _;
use kvcat_policies as _;

mod runner_support;
use kvcat_bench::report::write_report;
use kvcat_bench::results::ResultRow;
use kvcat_bench::runner::kvcat_executor::KvcatExecutor;
use kvcat_bench::runner::manifest::Manifest;
use kvcat_bench::runner::store::recover;
use kvcat_bench::runner::{run_bench, Grid};
use runner_support::{options, play_corpus, temp_dir};
use std::path::Path;
use std::time::{Duration, Instant};

const MANIFEST: &str = r#"name = "e2e"
seed = 0
device = "cpu"
dtype = "f32"
budgets = [0.25, 0.5, 1.0]

[[model]]
name = "micro"

[model.pretrain]
steps = 6
batch_size = 4
seq_len = 64
data = { corpora = ["CORPUS"], synthetic_fraction = 0.25 }
loss = { w_mask = 0.0, w_full = 1.0 }
eval = { sequences = 4 }
split = { min_prefix = 16, max_prefix = 48 }

[model.pretrain.model]
tokenizer = { max_chars = 100000 }

[model.pretrain.model.config]
vocab_size = 384
hidden_size = 32
intermediate_size = 64
num_hidden_layers = 2
num_attention_heads = 2
num_key_value_heads = 1
head_dim = 16
max_position_embeddings = 256
tie_word_embeddings = true

[train]
steps = 3
batch_size = 4
seq_len = 64
data = { corpora = ["CORPUS"], synthetic_fraction = 0.25 }
eval = { sequences = 4 }
split = { min_prefix = 16, max_prefix = 48 }

[[policy]]
name = "none"

[[policy]]
name = "rand"

[[compressor]]
name = "streaming_llm"

[[compressor]]
name = "knorm"

[[task]]
name = "mqar"
n = 3
params = { context_len = 96, num_queries = 2, format = "lines" }

[[task]]
name = "ppl_continuation"
n = 3
params = { source = "CORPUS", prefix_len = 48, continuation_len = 16 }
"#;

fn manifest(root: &Path) -> Manifest {
    let corpus = play_corpus(root);
    let text = MANIFEST.replace("CORPUS", &corpus.display().to_string());
    Manifest::parse(&text, "e2e.toml").unwrap()
}

/// The columns that do not depend on timing or memory.
fn stable(rows: &[ResultRow]) -> Vec<ResultRow> {
    rows.iter()
        .map(|r| ResultRow {
            compress_seconds: 0.0,
            peak_memory_mb: 0.0,
            host_peak_rss_mb: 0.0,
            ..r.clone()
        })
        .collect()
}

#[test]
fn mini_manifest_end_to_end_then_kill_and_resume() {
    let root = temp_dir("e2e");
    let m = manifest(&root);
    let grid = Grid::expand(&m).unwrap();
    assert_eq!(grid.cells.len(), 2 * 2 * (1 + 2 * 2));

    // 1. A full run on the real trainer and evaluator.
    let out = root.join("full");
    let mut exec = KvcatExecutor::new(&m).unwrap();
    let s = run_bench(&m, &options(&out), &mut exec).unwrap();
    assert!(s.failed.is_empty(), "{:?}", s.failed);
    assert_eq!((s.ran, s.trained), (20, 3));
    let rows = recover(&out).unwrap().rows();
    let metrics = |task: &str, comp: &str| -> Vec<String> {
        let mut v: Vec<String> = rows
            .iter()
            .filter(|r| r.task == task && r.compressor == comp && r.policy == "rand")
            .map(|r| r.metric.clone())
            .collect();
        v.sort();
        v.dedup();
        v
    };
    assert_eq!(
        metrics("mqar", "none"),
        ["answer_logprob", "answer_nll", "string_match_all"]
    );
    for m in ["nll", "nll_delta", "nll_full", "ppl", "ppl_full"] {
        assert!(
            metrics("ppl_continuation", "knorm").iter().any(|x| x == m),
            "{m}"
        );
    }
    for r in &rows {
        assert_eq!(r.device, "cpu");
        assert_eq!(r.n, 3);
        assert!(r.value.is_finite(), "{r:?}");
        if r.compressor == "none" {
            assert_eq!(r.budget_achieved, 1.0, "{r:?}");
        } else {
            let asked: f64 = r.budget.parse().unwrap();
            // floor(slots · b) of 48–96 context slots.
            assert!((r.budget_achieved - asked).abs() < 0.05, "{r:?}");
        }
        // Uncompressed references agree with the compressed cells' own full-cache NLL.
        if r.metric == "nll_full" {
            let reference = rows
                .iter()
                .find(|x| {
                    x.compressor == "none"
                        && x.metric == "nll"
                        && x.policy == r.policy
                        && x.task == r.task
                })
                .unwrap();
            assert!(
                (reference.value - r.value).abs() < 1e-4,
                "{} vs {}",
                reference.value,
                r.value
            );
        }
    }
    // Per-example scores: every cell has one per example and metric, and their mean is the
    // cell's value (except `ppl`, which is exp of the mean NLL).
    let rec = recover(&out).unwrap();
    for ((id, cell_rows), examples) in rec.cells.iter().zip(&rec.cell_examples) {
        for r in cell_rows.iter().filter(|r| !r.metric.starts_with("ppl")) {
            let xs: Vec<f64> = examples
                .iter()
                .filter(|e| e.metric == r.metric)
                .map(|e| e.value)
                .collect();
            assert_eq!(xs.len(), 3, "cell {id} {}", r.metric);
            let mean = xs.iter().sum::<f64>() / 3.0;
            assert!((mean - r.value).abs() < 1e-9, "{mean} vs {r:?}");
        }
    }
    let report = write_report(&out).unwrap();
    assert_eq!(report.curves, 2 * 2 * 2);
    let md = std::fs::read_to_string(&report.report).unwrap();
    assert!(
        md.contains("### mqar — `string_match_all` ↑ (3 examples)"),
        "{md}"
    );
    assert!(out.join("plots/gain-micro-mqar.png").exists());
    assert!(out.join("plots/micro.png").exists() && out.join("plots/micro.svg").exists());

    // 2. The real binary, killed with SIGKILL after a few cells, then resumed.
    let killed = root.join("killed");
    let path = root.join("e2e.toml");
    std::fs::write(
        &path,
        MANIFEST.replace("CORPUS", &root.join("corpus").display().to_string()),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_kvcat");
    let args = |dir: &Path| {
        vec![
            "bench".to_string(),
            path.display().to_string(),
            "--out".into(),
            dir.display().to_string(),
            "--checkpoints".into(),
            out.join("checkpoints").display().to_string(),
        ]
    };
    let mut child = std::process::Command::new(bin)
        .args(args(&killed))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    loop {
        let done = std::fs::read_to_string(killed.join("cells.done")).unwrap_or_default();
        if done.lines().count() >= 5 || t0.elapsed() > Duration::from_secs(120) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let before = recover(&killed).unwrap().cells.len();
    assert!((5..20).contains(&before), "killed after {before} cells");
    let status = std::process::Command::new(bin)
        .args(args(&killed))
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let resumed = recover(&killed).unwrap();
    assert_eq!(
        stable(&resumed.rows()),
        stable(&rows),
        "same rows, in the same order, none lost or repeated"
    );
    assert_eq!(
        resumed.examples(),
        rec.examples(),
        "same per-example scores"
    );
}
