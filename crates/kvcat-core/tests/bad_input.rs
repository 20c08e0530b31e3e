//! Bad input gets a specific [`kvcat_core::Error`] variant whose message names the file and
//! the tensor or field at fault. Each broken checkpoint is built at test time in a temporary
//! directory from the `llama_gqa_tied` fixture (see `tools/fixtures/make_hf_fixtures.py`).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use kvcat_core::{Error, KvCache, Model};
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

const BASE: &str = "llama_gqa_tied";

/// Named tensors, as safetensors files hold them.
type Named = Vec<(String, Tensor)>;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf")
        .join(name)
}

/// A copy of a fixture directory that is removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn copy_of(name: &str, tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "kvcat-bad-input-{}-{tag}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for entry in std::fs::read_dir(fixture(name)).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
        Scratch(dir)
    }
    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
    fn load(&self) -> kvcat_core::Result<Model> {
        Model::load(&self.0, Device::Cpu, Kind::Float)
    }
    /// Rewrites `config.json` after `edit` changed its JSON object.
    fn edit_config(&self, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
        let path = self.path("config.json");
        let mut json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        edit(json.as_object_mut().unwrap());
        std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    }
    /// Rewrites `model.safetensors` after `edit` changed its named tensors.
    fn edit_weights(&self, edit: impl FnOnce(&mut Named)) {
        let path = self.path("model.safetensors");
        let mut tensors = Tensor::read_safetensors(&path).unwrap();
        edit(&mut tensors);
        Tensor::write_safetensors(&tensors, &path).unwrap();
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Loads, expecting failure; returns the error and its message.
fn load_err(s: &Scratch) -> (Error, String) {
    match s.load() {
        Ok(_) => panic!("{} loaded although it is broken", s.0.display()),
        Err(e) => {
            let msg = e.to_string();
            eprintln!("{msg}");
            assert!(!msg.contains('\n'), "error message is not one line: {msg}");
            (e, msg)
        }
    }
}

fn assert_names(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "message `{msg}` does not name `{p}`");
    }
}

#[test]
fn the_unbroken_copy_loads() {
    let s = Scratch::copy_of(BASE, "ok");
    s.load().expect("the fixture copy itself must load");
}

#[test]
fn missing_model_path() {
    let path = std::env::temp_dir().join("kvcat-bad-input-no-such-model");
    let err = Model::load(&path, Device::Cpu, Kind::Float).err().unwrap();
    assert!(
        matches!(&err, Error::Io { path: p, .. } if p == &path),
        "{err:?}"
    );
    assert_names(&err.to_string(), &["kvcat-bad-input-no-such-model"]);
}

#[test]
fn missing_config_json() {
    let s = Scratch::copy_of(BASE, "noconfig");
    std::fs::remove_file(s.path("config.json")).unwrap();
    let (err, msg) = load_err(&s);
    assert!(
        matches!(&err, Error::Io { path, source }
            if path.ends_with("config.json") && source.kind() == std::io::ErrorKind::NotFound),
        "{err:?}"
    );
    assert_names(&msg, &[&s.path("config.json").display().to_string()]);
}

#[test]
fn corrupt_config_json() {
    let s = Scratch::copy_of(BASE, "badjson");
    std::fs::write(
        s.path("config.json"),
        "{\"model_type\": \"llama\", \"hidden_",
    )
    .unwrap();
    let (err, msg) = load_err(&s);
    assert!(
        matches!(&err, Error::Format { file, .. } if file.ends_with("config.json")),
        "{err:?}"
    );
    assert_names(&msg, &["config.json", "not valid JSON"]);
}

#[test]
fn unsupported_model_type() {
    let s = Scratch::copy_of(BASE, "gpt2");
    s.edit_config(|c| {
        c.insert("model_type".into(), "gpt2".into());
    });
    let (err, msg) = load_err(&s);
    assert!(
        matches!(&err, Error::Unsupported { file, what, value, supported }
            if file.ends_with("config.json") && what == "model_type"
                && value.contains("gpt2") && supported.contains("llama")),
        "{err:?}"
    );
    assert_names(&msg, &["config.json", "model_type", "gpt2", "llama"]);
}

#[test]
fn missing_config_field() {
    let s = Scratch::copy_of(BASE, "nofield");
    s.edit_config(|c| {
        c.remove("intermediate_size");
    });
    let (err, msg) = load_err(&s);
    assert!(
        matches!(&err, Error::Config { file, field, .. }
            if file.ends_with("config.json") && field == "intermediate_size"),
        "{err:?}"
    );
    assert_names(&msg, &["config.json", "intermediate_size", "missing"]);
}

#[test]
fn config_field_with_the_wrong_type() {
    let s = Scratch::copy_of(BASE, "fieldtype");
    s.edit_config(|c| {
        c.insert("hidden_size".into(), "64".into());
    });
    let (err, msg) = load_err(&s);
    assert!(
        matches!(&err, Error::Config { file, field, .. }
            if file.ends_with("config.json") && field == "hidden_size"),
        "{err:?}"
    );
    assert_names(&msg, &["config.json", "hidden_size", "integer", "\"64\""]);
}

#[test]
fn config_that_is_not_an_object() {
    let s = Scratch::copy_of(BASE, "array");
    std::fs::write(s.path("config.json"), "[1, 2, 3]").unwrap();
    let (err, msg) = load_err(&s);
    assert!(
        matches!(&err, Error::Format { file, .. } if file.ends_with("config.json")),
        "{err:?}"
    );
    assert_names(&msg, &["config.json", "object"]);
}

#[test]
fn unsupported_rope_scaling_and_sliding_window() {
    let s = Scratch::copy_of(BASE, "rope");
    s.edit_config(|c| {
        c.insert(
            "rope_parameters".into(),
            serde_json::json!({"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}),
        );
    });
    let (err, msg) = load_err(&s);
    assert!(
        matches!(&err, Error::Config { field, .. } if field == "rope_scaling"),
        "{err:?}"
    );
    assert_names(&msg, &["config.json", "llama3", "default"]);

    let s = Scratch::copy_of(BASE, "window");
    s.edit_config(|c| {
        c.insert("model_type".into(), "mistral".into());
        c.insert("sliding_window".into(), 16.into());
    });
    let (err, msg) = load_err(&s);
    assert!(
        matches!(&err, Error::Config { field, .. } if field == "sliding_window"),
        "{err:?}"
    );
    assert_names(&msg, &["config.json", "sliding_window", "16"]);
}

#[test]
fn model_path_that_is_neither_a_directory_nor_gguf() {
    let path = fixture(BASE).join("config.json");
    let err = Model::load(&path, Device::Cpu, Kind::Float).err().unwrap();
    assert!(
        matches!(&err, Error::Format { file, .. } if file.ends_with("config.json")),
        "{err:?}"
    );
    assert_names(&err.to_string(), &["config.json", ".gguf"]);
}

#[test]
fn inconsistent_head_counts() {
    let s = Scratch::copy_of(BASE, "heads");
    s.edit_config(|c| {
        c.insert("num_key_value_heads".into(), 3.into());
    });
    let (err, msg) = load_err(&s);
    assert!(
        matches!(&err, Error::Config { field, .. } if field == "num_key_value_heads"),
        "{err:?}"
    );
    assert_names(
        &msg,
        &["config.json", "num_key_value_heads", "num_attention_heads"],
    );
}

#[test]
fn missing_safetensors_file() {
    let s = Scratch::copy_of(BASE, "noweights");
    std::fs::remove_file(s.path("model.safetensors")).unwrap();
    let (err, msg) = load_err(&s);
    assert!(
        matches!(&err, Error::Io { path, .. } if path.ends_with("model.safetensors")),
        "{err:?}"
    );
    assert_names(&msg, &["model.safetensors"]);
}

#[test]
fn corrupt_safetensors() {
    // Garbage, and a valid header whose data was cut short.
    let garbage = Scratch::copy_of(BASE, "garbage");
    std::fs::write(
        garbage.path("model.safetensors"),
        b"this is not a safetensors file",
    )
    .unwrap();
    let truncated = Scratch::copy_of(BASE, "truncated");
    let bytes = std::fs::read(truncated.path("model.safetensors")).unwrap();
    std::fs::write(
        truncated.path("model.safetensors"),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
    for s in [garbage, truncated] {
        let (err, msg) = load_err(&s);
        let want = s.path("model.safetensors").display().to_string();
        assert!(
            matches!(&err, Error::Format { file, .. } if file == &want),
            "{err:?}"
        );
        assert_names(&msg, &[&want, "safetensors"]);
    }
}

#[test]
fn tensor_with_wrong_shape() {
    let s = Scratch::copy_of(BASE, "shape");
    let name = "model.layers.1.self_attn.k_proj.weight";
    s.edit_weights(|ts| {
        let t = ts.iter_mut().find(|(n, _)| n == name).unwrap();
        t.1 = t.1.narrow(0, 0, 16).contiguous(); // [32, 64] → [16, 64]
    });
    let (err, msg) = load_err(&s);
    assert!(
        matches!(&err, Error::Shape { file, tensor, expected, got }
            if file.ends_with("model.safetensors") && tensor == name
                && expected == &vec![32, 64] && got == &vec![16, 64]),
        "{err:?}"
    );
    assert_names(&msg, &["model.safetensors", name, "[16, 64]", "[32, 64]"]);
}

#[test]
fn missing_tensor() {
    let s = Scratch::copy_of(BASE, "notensor");
    let name = "model.layers.0.mlp.up_proj.weight";
    s.edit_weights(|ts| ts.retain(|(n, _)| n != name));
    let (err, msg) = load_err(&s);
    assert!(
        matches!(&err, Error::MissingTensors { file, names }
            if file.ends_with("model.safetensors") && names == &vec![name.to_string()]),
        "{err:?}"
    );
    assert_names(&msg, &["model.safetensors", name]);
}

#[test]
fn sharded_checkpoint_with_a_missing_shard() {
    let s = Scratch::copy_of("llama_gqa_sharded", "noshard");
    std::fs::remove_file(s.path("model-00002-of-00002.safetensors")).unwrap();
    let (err, msg) = load_err(&s);
    assert!(
        matches!(&err, Error::Io { path, source }
            if path.ends_with("model-00002-of-00002.safetensors")
                && source.kind() == std::io::ErrorKind::NotFound),
        "{err:?}"
    );
    assert_names(&msg, &["model-00002-of-00002.safetensors"]);
}

#[test]
fn unsupported_tensor_element_type() {
    use safetensors::{tensor::TensorView, Dtype};
    let s = Scratch::copy_of(BASE, "f8");
    let path = s.path("model.safetensors");
    let name = "model.norm.weight";
    let mut tensors = Tensor::read_safetensors(&path).unwrap();
    tensors.retain(|(n, _)| n != name);
    let mut bufs: Vec<(String, Vec<u8>, Vec<usize>, Dtype)> = tensors
        .iter()
        .map(|(n, t)| {
            let mut buf = vec![0u8; t.numel() * 4];
            t.copy_data_u8(&mut buf, t.numel());
            let shape = t.size().iter().map(|&d| d as usize).collect();
            (n.clone(), buf, shape, Dtype::F32)
        })
        .collect();
    bufs.push((name.into(), vec![0x38; 64], vec![64], Dtype::F8_E4M3));
    let views: Vec<(String, TensorView)> = bufs
        .iter()
        .map(|(n, b, sh, dt)| (n.clone(), TensorView::new(*dt, sh.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
    let (err, msg) = load_err(&s);
    assert!(
        matches!(&err, Error::Unsupported { file, what, value, .. }
            if file.ends_with("model.safetensors") && what.contains(name) && value.contains("F8_E4M3")),
        "{err:?}"
    );
    assert_names(&msg, &["model.safetensors", name, "F8_E4M3", "BF16"]);
}

#[test]
fn sharded_checkpoint_errors_name_the_shard_or_index() {
    let shard = "model-00002-of-00002.safetensors";
    let edit_shard = |s: &Scratch, edit: &dyn Fn(&mut Named)| {
        let path = s.path(shard);
        let mut tensors = Tensor::read_safetensors(&path).unwrap();
        edit(&mut tensors);
        Tensor::write_safetensors(&tensors, &path).unwrap();
    };
    // A tensor of the second shard with the wrong shape: the shard is named.
    let s = Scratch::copy_of("llama_gqa_sharded", "shardshape");
    edit_shard(&s, &|ts| {
        let t = ts.iter_mut().find(|(n, _)| n == "lm_head.weight").unwrap();
        t.1 = t.1.narrow(0, 0, 10).contiguous();
    });
    let (err, msg) = load_err(&s);
    assert!(
        matches!(&err, Error::Shape { file, tensor, .. }
            if file.ends_with(shard) && tensor == "lm_head.weight"),
        "{err:?}"
    );
    assert_names(&msg, &[shard, "lm_head.weight"]);

    // A tensor missing from every shard: reported against the index that lists the names.
    let s = Scratch::copy_of("llama_gqa_sharded", "shardmissing");
    edit_shard(&s, &|ts| ts.retain(|(n, _)| n != "lm_head.weight"));
    let (err, msg) = load_err(&s);
    assert!(
        matches!(&err, Error::MissingTensors { file, names }
            if file.ends_with("model.safetensors.index.json")
                && names == &vec!["lm_head.weight".to_string()]),
        "{err:?}"
    );
    assert_names(&msg, &["model.safetensors.index.json", "lm_head.weight"]);
}

#[test]
fn sharded_checkpoint_with_a_corrupt_index() {
    let s = Scratch::copy_of("llama_gqa_sharded", "badindex");
    std::fs::write(s.path("model.safetensors.index.json"), "{\"weight_map\": [").unwrap();
    let (err, msg) = load_err(&s);
    assert!(
        matches!(&err, Error::Format { file, .. } if file.ends_with("model.safetensors.index.json")),
        "{err:?}"
    );
    assert_names(&msg, &["model.safetensors.index.json"]);
}

#[test]
fn unused_tensors_are_reported() {
    let s = Scratch::copy_of(BASE, "unused");
    s.edit_weights(|ts| {
        ts.push((
            "model.layers.9.extra.weight".into(),
            Tensor::zeros([2], (Kind::Float, Device::Cpu)),
        ))
    });
    // Loading still succeeds (extra tensors are a warning) …
    s.load().expect("extra tensors do not prevent loading");
    // … and the loader's fill step names them.
    let cfg = kvcat_core::LlamaConfig::from_hf_json(&s.path("config.json")).unwrap();
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let _net = kvcat_core::Llama::new(&vs.root(), &cfg);
    let tensors = Tensor::read_safetensors(s.path("model.safetensors"))
        .unwrap()
        .into_iter()
        .map(|(n, t)| (n, (t, "model.safetensors".to_string())))
        .collect();
    let unused =
        kvcat_core::loading::hf::fill_vars(&vs, tensors, "model.safetensors", &[]).unwrap();
    assert_eq!(unused, vec!["model.layers.9.extra.weight".to_string()]);
}

#[test]
fn token_ids_out_of_range() {
    let model = Model::load(&fixture(BASE), Device::Cpu, Kind::Float).unwrap();
    let vocab = model.config.vocab_size;
    let _g = tch::no_grad_guard();
    for (ids, bad_id, bad_index) in [(vec![3i64, 5, vocab, 7], vocab, 2), (vec![-1i64, 5], -1, 0)] {
        let tokens = Tensor::from_slice(&ids).view([1, -1]);
        let err = model.forward(&tokens, &mut KvCache::new()).err().unwrap();
        assert!(
            matches!(err, Error::TokenOutOfRange { id, index, vocab: v }
                if id == bad_id && index == bad_index && v == vocab),
            "{err:?}"
        );
        assert_names(&err.to_string(), &[&bad_id.to_string(), &vocab.to_string()]);
    }
}
