//! Invariants of the model and its caller-owned cache on a tiny random model.

use kvcat_core::{KvCache, LlamaConfig, Model};
use tch::{Device, Kind, Tensor};

fn tiny(kv_heads: i64, tied: bool) -> Model {
    tch::manual_seed(0);
    let cfg = LlamaConfig {
        num_key_value_heads: kv_heads,
        max_position_embeddings: 256,
        tie_word_embeddings: tied,
        ..LlamaConfig::tiny()
    };
    Model::from_config(&cfg, Device::Cpu, Kind::Float).unwrap()
}

fn ids(n: i64) -> Tensor {
    Tensor::randint(97, [1, n], (Kind::Int64, Device::Cpu))
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn cached_decoding_equals_full_recompute() {
    for (kvh, tied) in [(2, true), (4, false)] {
        let m = tiny(kvh, tied);
        let x = ids(12);
        let _g = tch::no_grad_guard();
        let full = m.forward(&x, &mut KvCache::new()).unwrap();
        let mut cache = KvCache::new();
        let mut parts = vec![m.forward(&x.narrow(1, 0, 7), &mut cache).unwrap()];
        parts.push(m.forward(&x.narrow(1, 7, 3), &mut cache).unwrap());
        for i in 10..12 {
            parts.push(m.forward(&x.narrow(1, i, 1), &mut cache).unwrap());
        }
        let inc = Tensor::cat(&parts, 1);
        assert!(
            max_diff(&full, &inc) < 1e-5,
            "diff {}",
            max_diff(&full, &inc)
        );
        assert_eq!(cache.seq_len, 12);
        assert_eq!(cache.slots(), vec![12, 12]);
    }
}

#[test]
fn masked_slot_has_zero_influence_and_zero_bias_changes_nothing() {
    let m = tiny(2, true);
    let _g = tch::no_grad_guard();
    let x = ids(10);
    let mut cache = m.prefill(&x.narrow(1, 0, 8)).unwrap();
    let next = x.narrow(1, 8, 2);
    let base = m.forward(&next, &mut cache.copy()).unwrap();
    // bias of zero changes nothing
    for l in cache.layers.iter_mut() {
        l.bias = Some(Tensor::zeros([1, 2, 8], (Kind::Float, Device::Cpu)));
    }
    let same = m.forward(&next, &mut cache.copy()).unwrap();
    assert!(max_diff(&base, &same) < 1e-6);
    // hiding slot 3 in every layer and head, then scrambling its k and v, changes nothing
    let mut masked = cache.copy();
    for l in masked.layers.iter_mut() {
        let keep = Tensor::ones([1, 2, 8], (Kind::Bool, Device::Cpu));
        let _ = keep.narrow(2, 3, 1).fill_(0);
        l.keep = Some(keep);
    }
    let a = m.forward(&next, &mut masked.copy()).unwrap();
    for l in masked.layers.iter_mut() {
        let _ = l.k.narrow(2, 3, 1).normal_(0.0, 100.0);
        let _ = l.v.narrow(2, 3, 1).normal_(0.0, 100.0);
    }
    let b = m.forward(&next, &mut masked.copy()).unwrap();
    assert!(max_diff(&a, &b) < 1e-6);
    assert!(max_diff(&a, &base) > 1e-4, "masking must change something");
    // positions continue from the original length even after dropping slots
    let idx = Tensor::from_slice(&[0i64, 2, 5, 7])
        .view([1, 1, 4])
        .expand([1, 2, 4], false);
    let mut small = KvCache {
        layers: cache.layers.iter().map(|l| l.gather(&idx)).collect(),
        seq_len: 8,
    };
    let _ = m.forward(&next, &mut small).unwrap();
    assert_eq!(small.seq_len, 10);
    let kept = small.layers[0].kept_positions(0);
    assert_eq!(
        Vec::<i64>::try_from(&kept[0]).unwrap(),
        vec![0, 2, 5, 7, 8, 9]
    );
}

#[test]
fn attention_capture_matches_sdpa_path() {
    let m = tiny(2, false);
    let _g = tch::no_grad_guard();
    let x = ids(9);
    let plain = m.forward(&x, &mut KvCache::new()).unwrap();
    let out = m
        .forward_with(
            &x,
            &mut KvCache::new(),
            &kvcat_core::ForwardOptions {
                capture_attention: true,
                capture_queries: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert!(max_diff(&plain, out.logits.as_ref().unwrap()) < 1e-5);
    assert_eq!(out.attention[0].size(), vec![1, 4, 9, 9]);
    let rows = out.attention[1].sum_dim_intlist(-1, false, Kind::Float);
    assert!(max_diff(&rows, &Tensor::ones_like(&rows)) < 1e-5);
    assert_eq!(out.queries[0].size(), vec![1, 4, 9, 8]);
}

#[test]
fn out_of_vocab_token_is_a_clear_error() {
    let m = tiny(2, true);
    let x = Tensor::from_slice(&[1i64, 2, 500]).view([1, 3]);
    let e = m.forward(&x, &mut KvCache::new()).unwrap_err().to_string();
    assert!(
        e.contains("500") && e.contains("index 2") && e.contains("97"),
        "{e}"
    );
}
