//! `kvcat forward` end to end: logits parity with transformers on the HF fixtures of
//! `kvcat-core` (see `tools/fixtures/make_hf_fixtures.py`), and one-line errors without a
//! panic or backtrace for bad input.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tch::Tensor;

const TOL: f64 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../kvcat-core/tests/fixtures/hf")
        .join(name)
}

/// A temporary directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("kvcat-cli-forward-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn kvcat_forward(model: &Path, ids: &Path, out: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvcat"))
        .args(["forward", "--device", "cpu", "--model"])
        .arg(model)
        .arg("--ids-file")
        .arg(ids)
        .arg("--out")
        .arg(out)
        .env("RUST_BACKTRACE", "1")
        .env_remove("RUST_LOG")
        .output()
        .expect("run the kvcat binary")
}

fn tensor(path: &Path, key: &str) -> Tensor {
    Tensor::read_safetensors(path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .into_iter()
        .find(|(n, _)| n == key)
        .unwrap_or_else(|| panic!("{}: no tensor `{key}`", path.display()))
        .1
}

#[test]
fn forward_writes_transformers_logits() {
    let tmp = Scratch::new("ok");
    for name in ["llama_gqa_tied", "llama_mha_untied", "llama_gqa_sharded"] {
        let dir = fixture(name);
        let out = tmp.0.join(format!("{name}.safetensors"));
        let run = kvcat_forward(&dir, &dir.join("ids.json"), &out);
        assert!(
            run.status.success(),
            "{name}: kvcat forward failed: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        let got = tensor(&out, "logits");
        let want = tensor(&dir.join("reference.safetensors"), "logits");
        assert_eq!(got.kind(), tch::Kind::Float);
        assert_eq!(got.size(), want.size(), "{name}: logits shape [T, vocab]");
        let d = (&got - &want).abs().max().double_value(&[]);
        assert!(d < TOL, "{name}: max-abs logits diff {d:e} ≥ {TOL:e}");
    }
}

/// A user error: non-zero exit, stderr is one `error: …` line (plus `caused by:` lines)
/// naming `names`, and nothing that looks like a panic or a backtrace.
fn assert_user_error(run: &Output, names: &[&str]) {
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "expected failure; stderr: {stderr}");
    assert_eq!(run.status.code(), Some(1), "stderr: {stderr}");
    for bad in ["panicked", "backtrace", "RUST_BACKTRACE", "stack backtrace"] {
        assert!(!stderr.contains(bad), "stderr shows `{bad}`: {stderr}");
    }
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        lines.first().is_some_and(|l| l.starts_with("error: ")),
        "stderr does not start with `error:`: {stderr}"
    );
    assert!(
        lines[1..]
            .iter()
            .all(|l| l.trim_start().starts_with("caused by: ")),
        "stderr has lines other than `error:` and `caused by:`: {stderr}"
    );
    for n in names {
        assert!(stderr.contains(n), "stderr does not name `{n}`: {stderr}");
    }
}

#[test]
fn bad_ids_files_fail_cleanly() {
    let tmp = Scratch::new("badids");
    let model = fixture("llama_gqa_tied");
    let out = tmp.0.join("out.safetensors");
    let cases = [
        ("not_json.json", "[1, 2, oops"),
        ("no_context.json", r#"{"continuation": [1, 2]}"#),
        ("strings.json", r#"{"context": ["a", "b"]}"#),
        ("unknown_field.json", r#"{"context": [1], "contxt": [2]}"#),
        ("empty.json", r#"{"context": []}"#),
    ];
    for (file, text) in cases {
        let ids = tmp.0.join(file);
        std::fs::write(&ids, text).unwrap();
        let run = kvcat_forward(&model, &ids, &out);
        assert_user_error(&run, &[file]);
        assert!(!out.exists(), "{file}: an output was written");
    }
    let missing = tmp.0.join("no_such_ids.json");
    assert_user_error(
        &kvcat_forward(&model, &missing, &out),
        &["no_such_ids.json"],
    );
}

#[test]
fn out_of_range_token_ids_fail_cleanly() {
    let tmp = Scratch::new("range");
    let ids = tmp.0.join("ids.json");
    std::fs::write(&ids, r#"{"context": [1, 2, 3], "continuation": [500]}"#).unwrap();
    let out = tmp.0.join("out.safetensors");
    let run = kvcat_forward(&fixture("llama_gqa_tied"), &ids, &out);
    assert_user_error(&run, &["ids.json", "500", "128"]);
    assert!(!out.exists());
}

#[test]
fn missing_or_broken_model_fails_cleanly() {
    let tmp = Scratch::new("model");
    let ids = fixture("llama_gqa_tied").join("ids.json");
    let out = tmp.0.join("out.safetensors");
    let missing = tmp.0.join("no_such_model");
    assert_user_error(&kvcat_forward(&missing, &ids, &out), &["no_such_model"]);

    // A model directory without config.json.
    let empty = tmp.0.join("empty_model");
    std::fs::create_dir_all(&empty).unwrap();
    assert_user_error(
        &kvcat_forward(&empty, &ids, &out),
        &["empty_model", "config.json"],
    );
    assert!(!out.exists());
}
