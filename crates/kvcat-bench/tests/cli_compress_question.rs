//! `kvcat compress` with a question in the ids file: query-aware compressors see it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use tch::Tensor;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../kvcat-core/tests/fixtures/hf/llama_gqa_tied")
}

fn compress(dir: &Path, name: &str, question: Option<&[i64]>) -> Result<Tensor, String> {
    let mut ids = serde_json::json!({
        "context": [101, 66, 110, 52, 111, 111, 22, 81, 100, 87, 84, 4, 86, 14, 119, 84, 107],
        "continuation": [85, 126, 49, 125],
    });
    if let Some(q) = question {
        ids["question"] = serde_json::json!(q);
    }
    let ids_path = dir.join(format!("{name}.json"));
    std::fs::write(&ids_path, ids.to_string()).unwrap();
    let out_path = dir.join(format!("out/{name}.safetensors"));
    let out = Command::new(env!("CARGO_BIN_EXE_kvcat"))
        .args(["compress", "--device", "cpu", "--model"])
        .arg(fixture())
        .arg("--ids-file")
        .arg(&ids_path)
        .args([
            "--compressor",
            "attention_matching",
            "--budget",
            "0.5",
            "--out",
        ])
        .arg(&out_path)
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let tensors = Tensor::read_safetensors(&out_path).unwrap();
    Ok(tensors
        .into_iter()
        .find(|(n, _)| n == "continuation_logits")
        .unwrap()
        .1)
}

#[test]
fn a_question_reaches_query_aware_compressors_and_bad_ids_are_errors() {
    let dir = std::env::temp_dir().join(format!("kvcat-compress-q-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let plain = compress(&dir, "plain", None).unwrap();
    let again = compress(&dir, "again", None).unwrap();
    let asked = compress(&dir, "asked", Some(&[12, 40, 77, 3])).unwrap();
    let diff = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]);
    assert_eq!(
        diff(&plain, &again),
        0.0,
        "deterministic without a question"
    );
    assert!(
        diff(&plain, &asked) > 1e-6,
        "attention_matching fits the question's queries too, so the result must change"
    );
    let err = compress(&dir, "bad", Some(&[5000])).unwrap_err();
    assert!(err.contains("5000") && err.contains("vocabulary"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
