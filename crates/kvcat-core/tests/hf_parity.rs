//! Logits parity with HF `transformers` on tiny random-init Llama checkpoints.
//!
//! The fixtures under `tests/fixtures/hf/` come from `tools/fixtures/make_hf_fixtures.py`:
//! each holds an HF checkpoint (f32), `ids.json`, and `reference.safetensors` with the token
//! ids `[T]` and the transformers logits `[T, vocab]`. kvcat must match them within 1e-4
//! max-abs, both in one full forward pass and through incremental cached decoding.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use kvcat_core::{ForwardOptions, KvCache, Logits, Model};
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

const TOL: f64 = 1e-4;
const FIXTURES: [&str; 3] = ["llama_gqa_tied", "llama_mha_untied", "llama_gqa_sharded"];

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf")
        .join(name)
}

/// The token ids `[1, T]` and the reference logits `[T, vocab]` of a fixture.
fn reference(name: &str) -> (Tensor, Tensor) {
    let ids = reference_tensor(name, "ids");
    (
        ids.to_kind(Kind::Int64).view([1, -1]),
        reference_tensor(name, "logits"),
    )
}

/// One tensor of a fixture's `reference.safetensors`.
fn reference_tensor(name: &str, key: &str) -> Tensor {
    let path = fixture(name).join("reference.safetensors");
    let tensors = Tensor::read_safetensors(&path).expect("read reference.safetensors");
    let get = |key: &str| {
        tensors
            .iter()
            .find(|(n, _)| n == key)
            .map(|(_, t)| t.shallow_clone())
            .unwrap_or_else(|| panic!("{}: no tensor `{key}`", path.display()))
    };
    get(key)
}

fn load(name: &str) -> Model {
    Model::load(&fixture(name), Device::Cpu, Kind::Float)
        .unwrap_or_else(|e| panic!("loading fixture {name}: {e}"))
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shape mismatch");
    (a - b).abs().max().double_value(&[])
}

#[test]
fn config_fields_are_read_from_hf_json() {
    let gqa = load("llama_gqa_tied");
    let c = &gqa.config;
    assert_eq!(
        (c.vocab_size, c.hidden_size, c.num_hidden_layers),
        (128, 64, 2)
    );
    assert_eq!(
        (c.num_attention_heads, c.num_key_value_heads, c.head_dim),
        (4, 2, 16)
    );
    assert_eq!(c.rope_theta, 1e5, "rope_theta comes from rope_parameters");
    assert_eq!(c.rms_norm_eps, 1e-6);
    assert!(c.tie_word_embeddings && gqa.lm_head.is_none());

    let mha = load("llama_mha_untied");
    assert_eq!(mha.config.rope_theta, 1e4);
    assert_eq!(mha.config.num_key_value_heads, 4);
    assert!(!mha.config.tie_word_embeddings && mha.lm_head.is_some());

    let sharded = load("llama_gqa_sharded");
    assert!(!fixture("llama_gqa_sharded")
        .join("model.safetensors")
        .exists());
    assert_eq!(
        sharded.config.num_attention_heads * sharded.config.head_dim,
        64
    );
    assert_eq!(sharded.config.hidden_size, 48);
}

#[test]
fn full_forward_matches_transformers() {
    let _g = tch::no_grad_guard();
    for name in FIXTURES {
        let model = load(name);
        let (ids, want) = reference(name);
        let got = model.forward(&ids, &mut KvCache::new()).unwrap().get(0);
        let d = max_diff(&got, &want);
        eprintln!("{name}: full forward max-abs diff {d:e}");
        assert!(d < TOL, "{name}: max-abs logits diff {d:e} ≥ {TOL:e}");
    }
}

#[test]
fn cached_incremental_decoding_matches_transformers() {
    let _g = tch::no_grad_guard();
    for name in FIXTURES {
        let model = load(name);
        let (ids, want) = reference(name);
        let t = ids.size()[1];
        // Prefill a chunk, a second chunk, then one token at a time.
        let mut cache = KvCache::new();
        let mut parts = Vec::new();
        let mut start = 0;
        for len in [11, 6].into_iter().chain(std::iter::repeat(1)) {
            if start >= t {
                break;
            }
            let len = len.min(t - start);
            parts.push(
                model
                    .forward(&ids.narrow(1, start, len), &mut cache)
                    .unwrap(),
            );
            start += len;
        }
        assert_eq!(cache.seq_len, t);
        let got = Tensor::cat(&parts, 1).get(0);
        let d = max_diff(&got, &want);
        eprintln!("{name}: cached decoding max-abs diff {d:e}");
        assert!(d < TOL, "{name}: cached decoding diff {d:e} ≥ {TOL:e}");
    }
}

#[test]
fn last_only_logits_match_the_last_row() {
    let _g = tch::no_grad_guard();
    let name = "llama_mha_untied";
    let model = load(name);
    let (ids, want) = reference(name);
    let t = ids.size()[1];
    let out = model
        .forward_with(
            &ids,
            &mut KvCache::new(),
            &ForwardOptions {
                logits: Logits::Last,
                ..Default::default()
            },
        )
        .unwrap();
    let last = out.logits.unwrap();
    assert_eq!(last.size(), vec![1, 1, 128]);
    let d = max_diff(&last.view([1, 128]), &want.narrow(0, t - 1, 1));
    assert!(d < TOL, "last-row diff {d:e}");
}

/// The fixtures must be able to catch a wrong RoPE base: a parity test that passes with
/// any θ would not test the rotary embedding at all.
#[test]
fn fixtures_are_sensitive_to_rope_theta() {
    let _g = tch::no_grad_guard();
    for name in ["llama_gqa_tied", "llama_mha_untied"] {
        let mut model = load(name);
        let (ids, want) = reference(name);
        model.net.config.rope_theta *= 10.0;
        let got = model.forward(&ids, &mut KvCache::new()).unwrap().get(0);
        let d = max_diff(&got, &want);
        eprintln!("{name}: 10x rope_theta moves logits by {d:e}");
        assert!(
            d > 1e-2,
            "{name}: a 10× rope_theta changed logits by only {d:e}"
        );
    }
}

/// The explicit-softmax path (taken when attention probabilities are captured) computes the
/// same logits, and its probabilities `[b, heads, t, slots + t]` match transformers' eager
/// attention weights, in one pass and through the cache.
#[test]
fn captured_attention_matches_transformers() {
    let _g = tch::no_grad_guard();
    let opts = ForwardOptions {
        capture_attention: true,
        capture_queries: true,
        ..Default::default()
    };
    for name in FIXTURES {
        let model = load(name);
        let (ids, want) = reference(name);
        let want_attn = reference_tensor(name, "attentions"); // [layers, heads, T, T]
        let t = ids.size()[1];
        let heads = model.config.num_attention_heads;

        let out = model
            .forward_with(&ids, &mut KvCache::new(), &opts)
            .unwrap();
        let d = max_diff(&out.logits.unwrap().get(0), &want);
        assert!(d < TOL, "{name}: capture path logits diff {d:e}");
        assert_eq!(out.attention.len() as i64, model.config.num_hidden_layers);
        assert_eq!(
            out.queries[0].size(),
            vec![1, heads, t, model.config.head_dim]
        );
        let attn = Tensor::stack(
            &out.attention.iter().map(|a| a.get(0)).collect::<Vec<_>>(),
            0,
        );
        let da = max_diff(&attn, &want_attn);
        eprintln!("{name}: attention probabilities max-abs diff {da:e}");
        assert!(da < 1e-5, "{name}: attention probabilities diff {da:e}");

        // Incremental: prefill 15 tokens, then one at a time; each step's probabilities are
        // the reference rows for those queries.
        let mut cache = KvCache::new();
        let mut start = 0;
        for len in [15].into_iter().chain(std::iter::repeat(1)) {
            if start >= t {
                break;
            }
            let len = len.min(t - start);
            let out = model
                .forward_with(&ids.narrow(1, start, len), &mut cache, &opts)
                .unwrap();
            let d = max_diff(&out.logits.unwrap().get(0), &want.narrow(0, start, len));
            assert!(
                d < TOL,
                "{name}: cached capture logits diff {d:e} at {start}"
            );
            for (l, a) in out.attention.iter().enumerate() {
                let w = want_attn
                    .get(l as i64)
                    .narrow(1, start, len)
                    .narrow(2, 0, start + len);
                let da = max_diff(&a.get(0), &w);
                assert!(
                    da < 1e-5,
                    "{name}: layer {l} attention diff {da:e} at {start}"
                );
            }
            start += len;
        }
    }
}

/// An all-zero per-layer bias routes attention through the additive-mask path; it must
/// change nothing.
#[test]
fn zero_layer_bias_matches_transformers() {
    let _g = tch::no_grad_guard();
    for name in FIXTURES {
        let model = load(name);
        let (ids, want) = reference(name);
        let t = ids.size()[1];
        let bias: Vec<Tensor> = (0..model.config.num_hidden_layers)
            .map(|_| Tensor::zeros([1, 1, t, t], (Kind::Float, Device::Cpu)))
            .collect();
        let out = model
            .forward_with(
                &ids,
                &mut KvCache::new(),
                &ForwardOptions {
                    layer_bias: Some(&bias),
                    ..Default::default()
                },
            )
            .unwrap();
        let d = max_diff(&out.logits.unwrap().get(0), &want);
        assert!(d < TOL, "{name}: zero layer_bias diff {d:e}");
    }
}

/// Rows of a batch do not interact: a batch of the reference sequence and its reverse gives
/// the reference logits in row 0 and the single-sequence logits of the reverse in row 1.
#[test]
fn batched_forward_matches_single_sequences() {
    let _g = tch::no_grad_guard();
    for name in FIXTURES {
        let model = load(name);
        let (ids, want) = reference(name);
        let rev = ids.flip([1]);
        let single_rev = model.forward(&rev, &mut KvCache::new()).unwrap();
        let batch = Tensor::cat(&[&ids, &rev], 0);
        let mut cache = KvCache::new();
        let first = model.forward(&batch.narrow(1, 0, 20), &mut cache).unwrap();
        let rest = model.forward(&batch.narrow(1, 20, 4), &mut cache).unwrap();
        let got = Tensor::cat(&[first, rest], 1);
        let d0 = max_diff(&got.get(0), &want);
        let d1 = max_diff(&got.get(1), &single_rev.get(0));
        assert!(d0 < TOL && d1 < TOL, "{name}: batched diffs {d0:e}, {d1:e}");
    }
}

/// Loading in bf16 converts every weight (the network sees the new dtype) and stays close to
/// the f32 reference: bf16 has 8 mantissa bits, so only a loose bound is meaningful.
#[test]
fn bf16_load_runs_in_bf16_and_stays_close() {
    let _g = tch::no_grad_guard();
    let name = "llama_gqa_tied";
    let model = Model::load(&fixture(name), Device::Cpu, Kind::BFloat16).unwrap();
    assert_eq!(model.kind(), Kind::BFloat16);
    assert_eq!(
        model.layers[1].self_attn.k_proj.weight.kind(),
        Kind::BFloat16
    );
    let (ids, want) = reference(name);
    let got = model.forward(&ids, &mut KvCache::new()).unwrap().get(0);
    assert_eq!(got.kind(), Kind::BFloat16);
    let got = got.to_kind(Kind::Float);
    let d = max_diff(&got, &want);
    let agree = got
        .argmax(-1, false)
        .eq_tensor(&want.argmax(-1, false))
        .to_kind(Kind::Float)
        .mean(Kind::Float)
        .double_value(&[]);
    eprintln!("{name}: bf16 max-abs diff {d:e}, argmax agreement {agree}");
    assert!(d < 0.5, "bf16 logits diff {d}");
    assert!(agree >= 0.9, "bf16 argmax agreement {agree}");
}

/// After evicting context slots, the continuation keeps its original positions (the
/// transformers/kvpress convention: `position_ids` continue from the original length).
/// Evicting by gathering the kept slots and hiding the others with the keep mask must both
/// give the transformers logits of the fixture's eviction reference.
#[test]
fn continuation_after_eviction_matches_transformers() {
    let _g = tch::no_grad_guard();
    for name in FIXTURES {
        let model = load(name);
        let (ids, _) = reference(name);
        let keep = reference_tensor(name, "compressed_keep"); // [K] context slots
        let want = reference_tensor(name, "compressed_logits"); // [C, vocab]
        let c = want.size()[0];
        let p = ids.size()[1] - c;
        let context = ids.narrow(1, 0, p);
        let continuation = ids.narrow(1, p, c);
        let kv_heads = model.config.num_key_value_heads;

        // Gathered: the cache holds only the K kept slots.
        let mut gathered = model.prefill(&context).unwrap();
        let index = keep.view([1, 1, -1]).expand([1, kv_heads, -1], false);
        for i in 0..gathered.layers.len() {
            let layer = gathered.layers[i].gather(&index);
            gathered.set_layer(i, layer).unwrap();
        }
        assert_eq!(
            gathered.seq_len, p,
            "eviction must not move the position counter"
        );
        assert_eq!(gathered.layers[0].slots(), keep.size()[0]);
        let got = model.forward(&continuation, &mut gathered).unwrap().get(0);
        let d = max_diff(&got, &want);
        assert!(d < TOL, "{name}: gathered eviction diff {d:e}");

        // Masked: all P slots stay, the evicted ones are hidden.
        let mut masked = model.prefill(&context).unwrap();
        let mask = Tensor::zeros([p], (Kind::Bool, Device::Cpu))
            .index_fill(0, &keep, 1)
            .view([1, 1, p])
            .expand([1, kv_heads, p], false)
            .contiguous();
        for layer in &mut masked.layers {
            layer.keep = Some(mask.shallow_clone());
        }
        let got = model.forward(&continuation, &mut masked).unwrap().get(0);
        let d = max_diff(&got, &want);
        assert!(d < TOL, "{name}: keep-mask eviction diff {d:e}");
    }
}
