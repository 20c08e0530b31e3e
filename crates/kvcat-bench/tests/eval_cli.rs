//! `kvcat eval` end to end on a tiny random checkpoint saved with a tokenizer: the table, CSV
//! rows, and clear errors for bad input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod tasks_support;
use kvcat_bench::results::ResultRow;
use kvcat_core::{LlamaConfig, Model};
use std::path::PathBuf;
use std::process::Command;
use tch::{Device, Kind};

fn checkpoint(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kvcat-eval-cli-{}-{tag}", std::process::id()));
    if dir.join("config.json").exists() {
        return dir;
    }
    let tok = tasks_support::tokenizer();
    tch::manual_seed(1);
    let cfg = LlamaConfig {
        vocab_size: tok.vocab_size() as i64,
        bos_token_id: Some(0),
        ..LlamaConfig::tiny()
    };
    let mut model = Model::from_config(&cfg, Device::Cpu, Kind::Float).unwrap();
    model.tokenizer = Some(tok);
    model.save_hf(&dir).unwrap();
    dir
}

fn kvcat(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kvcat"))
        .arg("eval")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn eval_prints_a_table_and_writes_csv() {
    let dir = checkpoint("csv");
    let csv = dir.join("out/results.csv");
    let _ = std::fs::remove_file(&csv);
    let model = dir.display().to_string();
    let csv_s = csv.display().to_string();
    let args = [
        "--model",
        &model,
        "--task",
        "passkey",
        "--task-set",
        "context_len=120",
        "--task-set",
        "depth=0.5",
        "--n",
        "2",
        "--compressor",
        "knorm",
        "--budget",
        "1.0,0.5",
        "--csv",
        &csv_s,
    ];
    let (ok, stdout, stderr) = kvcat(&args);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("string_match_all"), "{stdout}");
    // Run twice: the header is written once, rows are appended.
    assert!(kvcat(&args).0);
    let mut r = csv::Reader::from_path(&csv).unwrap();
    let all: Vec<ResultRow> = r.deserialize().map(|x| x.unwrap()).collect();
    // Each budget writes the task metric, then `answer_nll` and `answer_logprob`.
    assert_eq!(all.len(), 12);
    assert!(all
        .iter()
        .any(|r| r.metric == "answer_nll" && r.value > 0.0));
    let rows: Vec<ResultRow> = all
        .into_iter()
        .filter(|r| r.metric == "string_match_all")
        .collect();
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[0].budget, "1");
    assert_eq!(rows[1].budget, "0.5");
    assert_eq!(rows[0].budget_achieved, 1.0);
    assert!(rows[1].budget_achieved < 0.51 && rows[1].budget_achieved > 0.45);
    assert_eq!(rows[0].task, "passkey");
    assert!(
        rows[0].task_params.contains("context_len=120")
            && rows[0].task_params.contains("depth=0.5")
    );
    assert_eq!(
        (rows[0].n, rows[0].metric.as_str()),
        (2, "string_match_all")
    );
    assert_ne!(rows[0].cell_id, rows[1].cell_id);
    assert_eq!(
        rows[0].cell_id, rows[2].cell_id,
        "cell ids are content hashes"
    );
}

#[test]
fn eval_bad_input_is_clear() {
    let dir = checkpoint("bad");
    let model = dir.display().to_string();
    for (extra, needle) in [
        (
            vec!["--task", "passkey", "--task-set", "context_len=4000"],
            "max_position_embeddings",
        ),
        (
            vec!["--task", "passkey", "--task-set", "depth=1.5"],
            "must lie in [0, 1]",
        ),
        (
            vec!["--task", "jsonl", "--task-set", "path=/no/such.jsonl"],
            "/no/such.jsonl",
        ),
        (vec!["--task", "nosuch"], "known tasks"),
        (
            vec![
                "--task",
                "passkey",
                "--budget",
                "1.5",
                "--compressor",
                "knorm",
            ],
            "(0, 1]",
        ),
    ] {
        let mut args = vec!["--model", model.as_str(), "--n", "1"];
        args.extend(extra);
        let (ok, _, stderr) = kvcat(&args);
        assert!(!ok);
        assert!(stderr.contains(needle), "{needle}: {stderr}");
    }
}
