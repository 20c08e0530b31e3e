//! Batched decoding over stacked caches: rows compressed differently (head-varying keep
//! masks, per-slot bias, different slot counts) and stacked with `KvCache::stack` decode as
//! each row alone; the single-token attention path with a keep mask equals the general path.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use kvcat_core::decode::{greedy, greedy_rows, prompt_rows, target_nll_rows, RaggedBatch};
use kvcat_core::model::{ForwardOptions, Logits};
use kvcat_core::{KvCache, LlamaConfig, Model};
use tch::{Device, Kind, Tensor};

fn tiny() -> Model {
    tch::manual_seed(11);
    let cfg = LlamaConfig {
        vocab_size: 64,
        intermediate_size: 48,
        max_position_embeddings: 256,
        tie_word_embeddings: false,
        ..LlamaConfig::tiny()
    };
    Model::from_config(&cfg, Device::Cpu, Kind::Float).unwrap()
}

fn ids(n: i64, seed: i64) -> Tensor {
    tch::manual_seed(seed);
    Tensor::randint(64, [1, n], (Kind::Int64, Device::Cpu))
}

/// A prefilled cache of `n` tokens "compressed" by hand: layer `l` keeps a random subset per
/// head (different counts per head, hidden by the keep mask), and gets a per-slot bias.
fn compressed(model: &Model, n: i64, seed: i64) -> KvCache {
    let mut cache = model.prefill(&ids(n, seed)).unwrap();
    for (l, layer) in cache.layers.iter_mut().enumerate() {
        let keep = Tensor::rand([1, 2, n], (Kind::Float, Device::Cpu)).gt(0.4);
        // The last slot stays visible in every head.
        let keep = keep.index_fill(2, &Tensor::from_slice(&[n - 1]), 1);
        let width = n - 2 - l as i64;
        let idx = Tensor::arange(width, (Kind::Int64, Device::Cpu))
            .view([1, 1, width])
            .expand([1, 2, width], true)
            + 2;
        let mut g = layer.gather(&idx);
        g.keep = Some(keep.gather(2, &idx, false));
        g.bias = Some(Tensor::randn([1, 2, width], (Kind::Float, Device::Cpu)) * 0.5);
        *layer = g;
    }
    cache
}

#[test]
fn stacked_rows_decode_as_each_row_alone() {
    let _g = tch::no_grad_guard();
    let model = tiny();
    let rows = [
        compressed(&model, 20, 1),
        compressed(&model, 13, 2),
        compressed(&model, 27, 3),
    ];
    let prompts = [ids(3, 4), ids(5, 5), ids(1, 6)];
    let answers = [ids(4, 7), ids(2, 8), ids(3, 9)];
    let max_new = [5usize, 2, 7];
    let mut stacked = KvCache::stack(&rows).unwrap();
    assert_eq!(stacked.layers[0].k.size()[0], 3);
    let starts: Vec<i64> = rows.iter().map(|c| c.seq_len).collect();
    let p = RaggedBatch::new(&prompts.iter().collect::<Vec<_>>(), Device::Cpu).unwrap();
    let last = prompt_rows(&model, &mut stacked, &p, &starts).unwrap();
    let after: Vec<i64> = starts.iter().zip(&p.lens).map(|(s, l)| s + l).collect();
    let a = RaggedBatch::new(&answers.iter().collect::<Vec<_>>(), Device::Cpu).unwrap();
    let nll = target_nll_rows(&model, &mut stacked, &last, &a, &after).unwrap();
    let got = greedy_rows(&model, &mut stacked, &last, &after, &max_new, &[]).unwrap();
    for (i, row) in rows.iter().enumerate() {
        // Alone: prompt ++ answer teacher-forced, then greedy from a fresh copy.
        let mut alone = row.copy();
        let seq = Tensor::cat(&[&prompts[i], &answers[i]], 1);
        let logits = model.forward(&seq, &mut alone).unwrap();
        let (pl, al) = (prompts[i].size()[1], answers[i].size()[1]);
        let want_nll = -logits
            .narrow(1, pl - 1, al)
            .log_softmax(-1, Kind::Float)
            .gather(-1, &answers[i].unsqueeze(-1), false)
            .sum(Kind::Double)
            .double_value(&[]);
        assert!(
            (nll[i] - want_nll).abs() < 1e-4,
            "row {i}: {} vs {want_nll}",
            nll[i]
        );
        let want = greedy(&model, &mut row.copy(), &prompts[i], max_new[i], &[]).unwrap();
        assert_eq!(got[i], want, "row {i}");
    }
}

#[test]
fn single_token_attention_with_keep_mask_equals_the_general_path() {
    let _g = tch::no_grad_guard();
    let model = tiny();
    let cache = compressed(&model, 24, 12);
    let token = ids(1, 13);
    let fast = model.forward(&token, &mut cache.copy()).unwrap();
    // Capturing attention takes the explicit softmax path with the full additive mask.
    let general = model
        .forward_with(
            &token,
            &mut cache.copy(),
            &ForwardOptions {
                capture_attention: true,
                logits: Logits::All,
                ..Default::default()
            },
        )
        .unwrap()
        .logits
        .unwrap();
    let diff = (&fast - &general).abs().max().double_value(&[]);
    assert!(diff < 1e-5, "{diff}");
}

/// Logits of `tokens` fed after `cache` by the default path and by the explicit softmax path
/// (capturing attention builds the full `[b, heads, t, slots]` additive mask).
fn default_and_explicit(model: &Model, cache: &KvCache, tokens: &Tensor) -> (Tensor, Tensor) {
    let fast = model.forward(tokens, &mut cache.copy()).unwrap();
    let opts = ForwardOptions {
        capture_attention: true,
        logits: Logits::All,
        ..Default::default()
    };
    let general = model
        .forward_with(tokens, &mut cache.copy(), &opts)
        .unwrap();
    (fast, general.logits.unwrap())
}

#[test]
fn several_new_tokens_over_a_cache_equal_the_general_path() {
    let _g = tch::no_grad_guard();
    let model = tiny();
    let tokens = ids(6, 14);
    // A plain cache (causal over the cached slots only), then a compressed one with a keep
    // mask and a bias, one of whose heads sees no cached slot at all in layer 0.
    let plain = model.prefill(&ids(17, 15)).unwrap();
    let mut masked = compressed(&model, 24, 12);
    let keep = masked.layers[0].keep.as_ref().unwrap();
    let blind = keep.index_fill(1, &Tensor::from_slice(&[1i64]), 0);
    masked.layers[0].keep = Some(blind);
    for cache in [&plain, &masked] {
        let (fast, general) = default_and_explicit(&model, cache, &tokens);
        let diff = (&fast - &general).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "{diff}");
        assert!(fast.isfinite().all().int64_value(&[]) == 1);
    }
}

#[test]
fn several_new_tokens_over_a_cache_in_bf16_stay_close_to_the_general_path() {
    let _g = tch::no_grad_guard();
    let mut model = tiny();
    model.vs.bfloat16();
    let cache = compressed(&model, 24, 18);
    let (fast, general) = default_and_explicit(&model, &cache, &ids(6, 19));
    assert_eq!(fast.kind(), Kind::BFloat16);
    let diff = (&fast - &general).abs().max().double_value(&[]);
    let scale = general.abs().max().double_value(&[]);
    assert!(diff < 0.02 * scale, "{diff} of {scale}");
}

#[test]
fn a_bias_being_fitted_gets_its_gradient_through_several_new_tokens() {
    // Frozen weights, as when `kv_fit` fits a cache: only the cache carries gradient.
    let mut model = tiny();
    model.vs.freeze();
    let tokens = ids(6, 16);
    let mut cache = tch::no_grad(|| compressed(&model, 24, 17));
    let bias = cache.layers[0].bias.take().unwrap().set_requires_grad(true);
    let grad_via = |capture_attention: bool| {
        let mut c = cache.copy();
        c.layers[0].bias = Some(bias.shallow_clone());
        let opts = ForwardOptions {
            capture_attention,
            logits: Logits::All,
            ..Default::default()
        };
        let logits = model
            .forward_with(&tokens, &mut c, &opts)
            .unwrap()
            .logits
            .unwrap();
        let loss = logits
            .log_softmax(-1, Kind::Float)
            .select(2, 3)
            .sum(Kind::Float);
        Tensor::run_backward(&[&loss], &[&bias], false, false).remove(0)
    };
    let (fast, general) = (grad_via(false), grad_via(true));
    assert!(fast.abs().sum(Kind::Float).double_value(&[]) > 0.0);
    let diff = (&fast - &general).abs().max().double_value(&[]);
    assert!(diff < 1e-5, "{diff}");
}

#[test]
fn stack_pads_with_hidden_slots_and_counts_held_bytes() {
    let model = tiny();
    let a = model.prefill(&ids(10, 1)).unwrap();
    let b = model.prefill(&ids(6, 2)).unwrap();
    let s = KvCache::stack(&[a.copy(), b.copy()]).unwrap();
    let l = &s.layers[0];
    assert_eq!(l.k.size(), [2, 2, 10, 8]);
    let kept = l.kept_per_head();
    assert_eq!(
        Vec::<i64>::try_from(kept.flatten(0, -1)).unwrap(),
        [10, 10, 6, 6]
    );
    assert!(a.layers[0].keep.is_none());
    // Same lengths and no masks: no keep mask is added.
    let same = KvCache::stack(&[a.copy(), a.copy()]).unwrap();
    assert!(same.layers[0].keep.is_none());
    // Held bytes count the padding (and the mask); kept bytes do not.
    assert!(s.held_bytes() > s.kept_bytes());
    assert_eq!(a.held_bytes(), a.kept_bytes());
    // Row cut of a batched prefill equals the batch-1 prefill.
    let row = s.row(1, 6);
    let diff = (&row.layers[1].v - &b.layers[1].v)
        .abs()
        .max()
        .double_value(&[]);
    assert!(diff < 1e-6, "{diff}");
    assert!(KvCache::stack(&[]).is_err());
}
