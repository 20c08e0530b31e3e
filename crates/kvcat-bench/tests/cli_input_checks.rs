//! The CLI says what it would otherwise accept silently, and names the field of a bad id: a
//! context beyond `max_position_embeddings` is warned about once on stderr, and an
//! out-of-vocabulary id is reported by `forward` and `compress` alike, naming the file, the
//! field and the index in it.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../kvcat-core/tests/fixtures/hf/llama_gqa_tied")
}

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kvcat-cli-checks-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn kvcat(args: &[&str], model: &Path, ids: &Path, out: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvcat"))
        .args(args)
        .args(["--device", "cpu", "--model"])
        .arg(model)
        .arg("--ids-file")
        .arg(ids)
        .arg("--out")
        .arg(out)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

#[test]
fn a_context_beyond_max_positions_is_said_once() {
    let dir = scratch("long");
    // The fixture has max_position_embeddings = 256 and vocab_size = 128.
    let ids: Vec<i64> = (0..300).map(|i| i % 128).collect();
    let path = dir.join("ids.json");
    std::fs::write(&path, serde_json::json!({ "context": ids }).to_string()).unwrap();
    let out = kvcat(
        &["forward"],
        &fixture(),
        &path,
        &dir.join("logits.safetensors"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.matches("max_position_embeddings = 256").count(),
        1,
        "{err}"
    );

    // Within the limit nothing is said.
    std::fs::write(
        &path,
        serde_json::json!({ "context": [1, 2, 3] }).to_string(),
    )
    .unwrap();
    let out = kvcat(
        &["forward"],
        &fixture(),
        &path,
        &dir.join("logits.safetensors"),
    );
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("max_position_embeddings"));
}

#[test]
fn an_out_of_vocabulary_id_names_the_field_and_index_in_forward_and_compress() {
    let dir = scratch("oov");
    let path = dir.join("ids.json");
    std::fs::write(
        &path,
        serde_json::json!({ "context": [1, 2, 3, 4, 5, 6, 7, 8], "continuation": [4, 500] })
            .to_string(),
    )
    .unwrap();
    let out_file = dir.join("out.safetensors");
    let forward = kvcat(&["forward"], &fixture(), &path, &out_file);
    let compress = kvcat(
        &["compress", "--compressor", "knorm", "--budget", "0.5"],
        &fixture(),
        &path,
        &out_file,
    );
    for out in [forward, compress] {
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        for part in [
            "ids.json",
            "field `continuation`[1]",
            "token id 500",
            "0 to 127",
        ] {
            assert!(err.contains(part), "`{part}` in {err}");
        }
    }
}
