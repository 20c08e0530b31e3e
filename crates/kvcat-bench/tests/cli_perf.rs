//! `kvcat perf` end to end on a tiny random model and on an HF fixture: the JSON report has
//! every section's field, keyed as documented, with positive finite values (no timing
//! thresholds); bad arguments fail with a one-line error.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::PathBuf;
use std::process::{Command, Output};

fn out_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kvcat-cli-perf-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn kvcat(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvcat"))
        .args(args)
        .output()
        .unwrap()
}

fn positive(v: &serde_json::Value, what: &str) -> f64 {
    let x = v
        .as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"));
    assert!(x.is_finite() && x > 0.0, "{what} = {x}");
    x
}

#[test]
fn perf_json_has_every_section_with_positive_numbers() {
    let dir = out_dir("tiny");
    let json = dir.join("perf.json");
    let out = kvcat(&[
        "perf",
        "--scratch",
        "tiny",
        "--device",
        "cpu",
        "--lens",
        "16,32",
        "--decode-tokens",
        "3",
        "--compressors",
        "knorm,streaming_llm,attention_matching",
        "--budget",
        "0.5",
        "--policies",
        "plain,none,rand",
        "--train-batch",
        "2",
        "--train-len",
        "16",
        "--warmup",
        "0",
        "--repeats",
        "2",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for len in ["16", "32"] {
        positive(&r["prefill_tok_s"][len], &format!("prefill_tok_s.{len}"));
    }
    assert_eq!(r["prefill_tok_s"].as_object().unwrap().len(), 2);
    positive(&r["decode_tok_s"], "decode_tok_s");
    let compress = r["compress_s"].as_object().unwrap();
    for name in ["knorm", "streaming_llm", "attention_matching"] {
        positive(&compress[name], &format!("compress_s.{name}"));
    }
    assert!(r["compress_failed"].as_object().unwrap().is_empty(), "{r}");
    let train = r["train_tok_s"].as_object().unwrap();
    assert_eq!(train.len(), 3, "{r}");
    for name in ["plain", "none", "rand"] {
        positive(&train[name], &format!("train_tok_s.{name}"));
    }
    assert_eq!(r["device"], "cpu");
    assert_eq!(r["dtype"], "f32");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("prefill") && stdout.contains("train"),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn perf_sections_limit_what_is_measured_and_bad_lengths_are_refused() {
    let dir = out_dir("sections");
    let json = dir.join("perf.json");
    let out = kvcat(&[
        "perf",
        "--scratch",
        "tiny",
        "--device",
        "cpu",
        "--lens",
        "8",
        "--sections",
        "prefill",
        "--warmup",
        "0",
        "--repeats",
        "1",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    positive(&r["prefill_tok_s"]["8"], "prefill_tok_s.8");
    assert!(r["decode_tok_s"].is_null());
    assert!(r["compress_s"].as_object().unwrap().is_empty());
    assert!(r["train_tok_s"].as_object().unwrap().is_empty());

    let bad = kvcat(&[
        "perf",
        "--scratch",
        "tiny",
        "--device",
        "cpu",
        "--lens",
        "1",
    ]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("--lens") && !err.contains("panicked"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
