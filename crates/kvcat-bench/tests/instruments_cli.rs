//! `kvcat analyze`, `kvcat eval --compress-every` and `kvcat generate --compressor` end to end
//! on a tiny random checkpoint saved with a tokenizer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod tasks_support;
use kvcat_bench::results::ResultRow;
use kvcat_core::{LlamaConfig, Model};
use std::path::PathBuf;
use std::process::Command;
use tch::{Device, Kind};

fn checkpoint(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kvcat-instruments-{}-{tag}", std::process::id()));
    let tok = tasks_support::tokenizer();
    tch::manual_seed(2);
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
fn analyze_writes_profile_figures_and_comparison() {
    let dir = checkpoint("analyze");
    let (model, out) = (dir.display().to_string(), dir.join("profile"));
    let out_s = out.display().to_string();
    let base = [
        "analyze",
        "--model",
        &model,
        "--task",
        "passkey",
        "--task-set",
        "context_len=150",
        "--n",
        "2",
        "--device",
        "cpu",
    ];
    let mut args = base.to_vec();
    args.extend([
        "--budgets",
        "0.25,0.5",
        "--compressors",
        "knorm,kv_merge",
        "--compare",
        &model,
        "--out",
        &out_s,
    ]);
    let (ok, stdout, stderr) = kvcat(&args);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("oracle mass AUC"), "{stdout}");
    for f in [
        "profile.csv",
        "compare.csv",
        "heatmap_mass_auc.svg",
        "heatmap_mass_auc_diff.png",
        "curves_kept_mass.png",
        "curves_output_rel_error.svg",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let text = std::fs::read_to_string(out.join("profile.csv")).unwrap();
    for needle in [
        ",oracle,0.25,",
        ",knorm,0.5,",
        ",kv_merge,0.25,",
        ",mass_auc,oracle,",
        ",key_erank,",
    ] {
        assert!(text.contains(needle), "no `{needle}` row");
    }
    let mut args = base.to_vec();
    args.extend(["--budgets", "64", "--out", &out_s]);
    let (ok, _, stderr) = kvcat(&args);
    assert!(!ok && stderr.contains("fractions"), "{stderr}");
}

#[test]
fn eval_compress_every_records_compressions_and_bytes() {
    let dir = checkpoint("eval");
    let model = dir.display().to_string();
    let csv = dir.join("rows.csv");
    let csv_s = csv.display().to_string();
    let args = [
        "eval",
        "--model",
        &model,
        "--task",
        "mqar",
        "--task-set",
        "context_len=100",
        "--task-set",
        "max_new_tokens=12",
        "--n",
        "2",
        "--compressor",
        "knorm",
        "--budget",
        "0.5",
        "--device",
        "cpu",
        "--csv",
        &csv_s,
    ];
    let (ok, _, stderr) = kvcat(&args);
    assert!(ok, "{stderr}");
    let mut every = args.to_vec();
    every.extend(["--compress-every", "4"]);
    let (ok, stdout, stderr) = kvcat(&every);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("decode_compressions"), "{stdout}");
    let rows: Vec<ResultRow> = csv::Reader::from_path(&csv)
        .unwrap()
        .deserialize()
        .map(|r| r.unwrap())
        .collect();
    let get = |m: &str| {
        rows.iter()
            .find(|r| r.metric == m)
            .unwrap_or_else(|| panic!("no {m} row"))
    };
    // 11 generated tokens are fed: compressions after 4 and 8 of them.
    assert_eq!(get("decode_compressions").value, 2.0);
    assert!(get("decode_kv_bytes_end").value > 0.0);
    assert_ne!(
        rows[0].cell_id,
        get("decode_compressions").cell_id,
        "a different cell"
    );
    let (ok, _, stderr) = kvcat(&[
        "eval",
        "--model",
        &model,
        "--task",
        "mqar",
        "--compress-every",
        "4",
    ]);
    assert!(!ok && stderr.contains("needs a --compressor"), "{stderr}");
}

#[test]
fn generate_compresses_during_generation() {
    let dir = checkpoint("generate");
    let model = dir.display().to_string();
    let prompt = "the quick brown fox jumps over the lazy dog and keeps running far away";
    let args = [
        "generate",
        "--model",
        &model,
        "--prompt",
        prompt,
        "--max-new-tokens",
        "12",
        "--compressor",
        "knorm",
        "--budget",
        "0.5",
        "--compress-every",
        "4",
        "--device",
        "cpu",
    ];
    let (ok, _, stderr) = kvcat(&args);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("2 compressions during generation"),
        "{stderr}"
    );
}
