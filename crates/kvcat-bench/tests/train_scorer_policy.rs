//! Training under the `scorer` policy: a tiny from-scratch model trains for `knorm` and for
//! `snapkv`, `metrics.jsonl` records the kept fraction of the prefix, and a scorer whose
//! protected window exceeds the training budget stops with an error that says what to change.

use kvcat_bench::train::{train, BudgetSchedule, TrainConfig, TrainRunOptions};
use kvcat_compressors as _;
use kvcat_core::{Budget, LlamaConfig};
use kvcat_policies as _;
use std::path::{Path, PathBuf};

fn scratch_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kvcat-scorer-train-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

/// A deterministic pseudo-English corpus of ~40k characters.
fn corpus(dir: &Path) -> PathBuf {
    let words = [
        "the", "king", "of", "and", "to", "my", "lord", "is", "love", "thou", "sir",
    ];
    let mut s = String::new();
    let mut z: u64 = 7;
    for line in 0..1500 {
        for _ in 0..5 {
            z = z
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            s.push_str(words[(z >> 33) as usize % words.len()]);
            s.push(' ');
        }
        s.push_str(if line % 3 == 0 { "!\n" } else { ".\n" });
    }
    let p = dir.join("corpus.txt");
    std::fs::write(&p, s).expect("corpus");
    p
}

/// A 2-layer scratch model, prefixes of 16–24 of 32 tokens, kept fraction 0.25 or 0.5.
fn config(root: &Path, scorer: toml::Table) -> TrainConfig {
    let mut c = TrainConfig::default();
    c.model.config = Some(LlamaConfig {
        vocab_size: 300,
        max_position_embeddings: 128,
        ..LlamaConfig::tiny()
    });
    c.data.corpora = vec![corpus(root).display().to_string()];
    c.data.cache_dir = Some(root.join("cache"));
    c.data.heldout_fraction = 0.1;
    c.batch_size = 4;
    c.seq_len = 32;
    c.steps = 3;
    c.optim.warmup = 1;
    c.eval.sequences = 4;
    c.split.min_prefix = Some(16);
    c.split.max_prefix = Some(24);
    c.budget = BudgetSchedule::Fixed {
        values: vec![
            Budget::fraction(0.25).expect("b"),
            Budget::fraction(0.5).expect("b"),
        ],
    };
    c.policy.name = "scorer".into();
    c.policy.params = scorer;
    c
}

fn scorer(name: &str, params: &[(&str, i64)]) -> toml::Table {
    let inner: toml::Table = params
        .iter()
        .map(|(k, v)| (k.to_string(), (*v).into()))
        .collect();
    let mut t = toml::Table::new();
    t.insert("scorer".into(), name.into());
    t.insert("params".into(), toml::Value::Table(inner));
    t
}

/// The `kept_fraction` of every line of `metrics.jsonl` that has one.
fn kept_fractions(out: &Path) -> Vec<f64> {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).expect("metrics.jsonl");
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get("kept_fraction").and_then(|x| x.as_f64()))
        .collect()
}

#[test]
fn trains_for_knorm_and_snapkv_and_logs_the_kept_fraction() {
    for (name, params) in [("knorm", vec![]), ("snapkv", vec![("window_size", 4)])] {
        let root = scratch_dir(name);
        let out = root.join("out");
        let cfg = config(&root, scorer(name, &params));
        let s = train(&cfg, &out, &TrainRunOptions::default())
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!(s.steps, 3, "{name}");
        let last = s.last.expect("a step log");
        assert!(
            last.loss.is_finite() && last.mask.is_some_and(f64::is_finite),
            "{name}"
        );
        let kept = kept_fractions(&out);
        assert_eq!(kept.len(), 3, "{name}: one kept_fraction per step");
        // floor(P·b)/P for P in 16..=24 and b in {0.25, 0.5}: strictly inside (0.18, 0.5].
        for k in kept {
            assert!(k > 0.18 && k <= 0.5, "{name}: kept fraction {k}");
        }
        let _ = std::fs::remove_dir_all(&root);
    }
}

#[test]
fn a_window_larger_than_the_training_budget_is_refused_with_the_fields_to_change() {
    let root = scratch_dir("snapkv-window");
    // SnapKV's default 64-token window cannot fit prefixes of 16–24 tokens.
    let cfg = config(&root, scorer("snapkv", &[]));
    let e = train(&cfg, &root.join("out"), &TrainRunOptions::default())
        .err()
        .expect("window larger than the budget");
    let e = format!("{e:#}");
    for want in ["scorer", "snapkv", "window_size", "budget.min"] {
        assert!(e.contains(want), "`{want}` missing from: {e}");
    }
    let _ = std::fs::remove_dir_all(&root);
}
