//! What loading assumes or ignores is said, not silent: a tied model whose checkpoint holds a
//! different `lm_head.weight`, and a `config.json` without `rms_norm_eps` (or `rope_theta`,
//! `max_position_embeddings`) give a note naming the file and the key; a failed tensor write
//! names the file and the OS error in words.

#![allow(clippy::unwrap_used)]

use kvcat_core::{Error, LlamaConfig, Model};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

fn copy_fixture(name: &str, tag: &str) -> PathBuf {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf")
        .join(name);
    let dir = std::env::temp_dir().join(format!("kvcat-load-notes-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
    }
    dir
}

fn load(dir: &Path) -> Model {
    Model::load(dir, Device::Cpu, Kind::Float).unwrap()
}

fn add_head(dir: &Path, head: impl Fn(&Tensor) -> Tensor) {
    let path = dir.join("model.safetensors");
    let mut ts = Tensor::read_safetensors(&path).unwrap();
    let emb = ts
        .iter()
        .find(|(n, _)| n == "model.embed_tokens.weight")
        .unwrap()
        .1
        .copy();
    ts.push(("lm_head.weight".into(), head(&emb)));
    Tensor::write_safetensors(&ts, &path).unwrap();
}

#[test]
fn a_tied_model_with_a_different_lm_head_says_the_head_is_ignored() {
    let dir = copy_fixture("llama_gqa_tied", "tied-diff");
    assert!(
        load(&dir).notes.is_empty(),
        "the plain fixture has nothing to say"
    );
    add_head(&dir, |e| e + 1.0);
    let notes = load(&dir).notes;
    assert_eq!(notes.len(), 1, "{notes:?}");
    for part in [
        "config.json",
        "tie_word_embeddings",
        "lm_head.weight",
        "ignored",
    ] {
        assert!(notes[0].contains(part), "{notes:?}");
    }
    // An exact copy of the embeddings (as some exporters write) is fine.
    let dir = copy_fixture("llama_gqa_tied", "tied-same");
    add_head(&dir, |e| e.copy());
    assert!(load(&dir).notes.is_empty());
}

#[test]
fn config_defaults_filled_in_are_noted() {
    let dir = copy_fixture("llama_gqa_tied", "no-eps");
    let path = dir.join("config.json");
    let (_, notes) = LlamaConfig::from_hf_json_noted(&path).unwrap();
    assert!(notes.is_empty(), "{notes:?}");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    json.as_object_mut().unwrap().remove("rms_norm_eps");
    std::fs::write(&path, json.to_string()).unwrap();
    let (cfg, notes) = LlamaConfig::from_hf_json_noted(&path).unwrap();
    assert_eq!(cfg.rms_norm_eps, 1e-6);
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(
        notes[0].contains("config.json")
            && notes[0].contains("`rms_norm_eps`")
            && notes[0].contains("1e-6")
    );
    // The loaded model carries the note for result rows.
    assert_eq!(load(&dir).notes, notes);
}

#[test]
fn a_failed_tensor_write_names_the_file_and_the_os_error() {
    let full = Path::new("/dev/full");
    if !full.exists() {
        return;
    }
    let vars = vec![(
        "w".to_string(),
        Tensor::zeros([4096], (Kind::Float, Device::Cpu)),
    )];
    let e = kvcat_core::loading::write_safetensors(&vars, full).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    assert!(
        msg.contains("/dev/full") && msg.contains("No space left on device"),
        "{msg}"
    );
    assert!(!msg.contains("IoError(") && !msg.contains("Os {"), "{msg}");
}
