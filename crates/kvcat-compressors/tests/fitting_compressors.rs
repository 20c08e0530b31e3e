//! `attention_matching` and `kv_fit` on a tiny random checkpoint: exact reproduction at full
//! budget, lower held-out attention-output error than the eviction compressors at the same
//! budget, a monotonically decreasing Adam loss, and determinism.

#![allow(clippy::unwrap_used)]

use kvcat_compressors as _;
use kvcat_compressors::fitting::attention_matching::{AttentionMatching, AttentionMatchingParams};
use kvcat_compressors::fitting::kv_fit::{KvFit, KvFitParams};
use kvcat_compressors::fitting::reference::{group_queries, RepeatProbe};
use kvcat_compressors::fitting::{attention_output_error, compact};
use kvcat_core::compressor::build_compressor;
use kvcat_core::model::ForwardOptions;
use kvcat_core::{probe, Budget, CompressionInput, Compressor, KvCache, LlamaConfig, Model};
use tch::{Device, Kind, Tensor};

/// A tiny GQA model whose query/key projections are scaled up so that attention is peaked
/// (N(0, 0.02) weights alone give nearly uniform attention).
fn tiny() -> Model {
    tch::manual_seed(11);
    let cfg = LlamaConfig {
        vocab_size: 101,
        hidden_size: 64,
        intermediate_size: 96,
        head_dim: 16,
        ..LlamaConfig::tiny()
    };
    let m = Model::from_config(&cfg, Device::Cpu, Kind::Float).expect("tiny model");
    let _g = tch::no_grad_guard();
    for l in &m.net.layers {
        for w in [&l.self_attn.q_proj.weight, &l.self_attn.k_proj.weight] {
            let mut w = w.shallow_clone();
            let _ = w.g_mul_scalar_(12.0);
        }
    }
    m
}

struct Setup {
    model: Model,
    context: Tensor,
    cache: KvCache,
    hidden: Vec<Tensor>,
    /// Held-out queries per layer `[1, heads, c, d]`: a different continuation of the context.
    held_out: Vec<Tensor>,
}

fn setup(t: i64) -> Setup {
    let model = tiny();
    let context = Tensor::randint(101, [1, t], (Kind::Int64, Device::Cpu));
    let (cache, hidden) = probe::prefill_for_compression(&model, &context).expect("prefill");
    let cont = Tensor::randint(101, [1, 24], (Kind::Int64, Device::Cpu));
    let mut c2 = cache.copy();
    let out = model
        .forward_with(
            &cont,
            &mut c2,
            &ForwardOptions {
                capture_queries: true,
                logits: kvcat_core::Logits::None,
                ..Default::default()
            },
        )
        .expect("continuation");
    Setup {
        model,
        context,
        cache,
        hidden,
        held_out: out.queries,
    }
}

fn input<'a>(s: &'a Setup, budget: Budget) -> CompressionInput<'a> {
    CompressionInput {
        model: &s.model,
        cache: &s.cache,
        context: &s.context,
        hidden: &s.hidden,
        question: None,
        budget,
        seed: 0,
    }
}

/// Mean over layers of the held-out relative attention-output error.
fn held_out_error(s: &Setup, compressed: &KvCache) -> f64 {
    let n = s.cache.layers.len();
    (0..n)
        .map(|l| {
            attention_output_error(
                &s.model,
                l,
                &s.held_out[l],
                &s.cache.layers[l],
                &compressed.layers[l],
            )
            .expect("error")
        })
        .sum::<f64>()
        / n as f64
}

fn table(pairs: &[(&str, toml::Value)]) -> toml::Table {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// Every eviction compressor that runs at this budget, with its held-out error.
fn eviction_errors(s: &Setup, budget: Budget) -> Vec<(String, f64)> {
    let small_window = table(&[("window_size", toml::Value::Integer(4))]);
    let mut out = vec![];
    for (name, params) in [
        ("snapkv", small_window.clone()),
        ("observed_attention", toml::Table::new()),
        ("tova", toml::Table::new()),
        ("expected_attention", toml::Table::new()),
        ("knorm", toml::Table::new()),
        ("keydiff", toml::Table::new()),
        ("random", toml::Table::new()),
        ("streaming_llm", toml::Table::new()),
    ] {
        let Ok(c) = build_compressor(name, &params) else {
            continue;
        };
        if let Ok(r) = c.compress(&input(s, budget)) {
            out.push((name.to_string(), held_out_error(s, &r.cache)));
        }
    }
    out
}

#[test]
fn full_budget_fit_reproduces_attention_outputs() {
    let s = setup(20);
    let _g = tch::no_grad_guard();
    // The registered compressor returns the cache unchanged at full budget.
    let am = build_compressor("attention_matching", &toml::Table::new()).unwrap();
    let r = am.compress(&input(&s, Budget::full())).unwrap();
    assert_eq!(held_out_error(&s, &r.cache), 0.0);
    // The fit itself, forced to keep all 20 slots, reproduces held-out outputs to 1e-4:
    // β = 0 (NNLS finds w = 1) and the values are the originals.
    let fitter = AttentionMatching {
        params: AttentionMatchingParams::default(),
    };
    let probe_state = RepeatProbe::new(&s.model, &s.context, &[], None, 20).unwrap();
    let refs = group_queries(&probe_state.queries(), 2, 0);
    let (layer, err, mass) = fitter.compact_layer(&s.cache.layers[0], &refs, 20).unwrap();
    assert!(
        err < 1e-6 && mass < 1e-6,
        "fit error {err}, mass error {mass}"
    );
    let bias = layer.bias.as_ref().unwrap().abs().max().double_value(&[]);
    assert!(bias < 1e-4, "β should be 0, max |β| = {bias}");
    let e =
        attention_output_error(&s.model, 0, &s.held_out[0], &s.cache.layers[0], &layer).unwrap();
    assert!(e < 1e-4, "held-out relative error {e}");
}

#[test]
fn compact_head_at_full_size_is_exact_on_random_data() {
    tch::manual_seed(5);
    let (n, sl, d) = (64, 24, 16);
    let q = Tensor::randn([n, d], (Kind::Double, Device::Cpu)) * 2.0;
    let k = Tensor::randn([sl, d], (Kind::Double, Device::Cpu));
    let v = Tensor::randn([sl, d], (Kind::Double, Device::Cpu));
    let opts = compact::CompactOptions::default();
    let fit = compact::compact_head(&q, &k, &v, None, sl, &opts).unwrap();
    let probe_q = Tensor::randn([32, d], (Kind::Double, Device::Cpu)) * 2.0;
    let attend = |k: &Tensor, v: &Tensor, b: Option<&Tensor>| {
        let mut l = probe_q.matmul(&k.tr()) / (d as f64).sqrt();
        if let Some(b) = b {
            l += b.unsqueeze(0);
        }
        l.softmax(-1, Kind::Double).matmul(v)
    };
    let o = attend(&k, &v, None);
    let o2 = attend(&fit.k, &fit.v, Some(&fit.bias));
    let diff = (o - o2).abs().max().double_value(&[]);
    assert!(diff < 1e-4, "max abs diff {diff}");
}

#[test]
fn attention_matching_beats_eviction_on_held_out_queries() {
    let s = setup(48);
    let budget = Budget::Fraction(0.25);
    let _g = tch::no_grad_guard();
    let am = build_compressor("attention_matching", &toml::Table::new()).unwrap();
    let r = am.compress(&input(&s, budget)).unwrap();
    // achieved budget and shapes
    for (l, layer) in r.cache.layers.iter().enumerate() {
        assert_eq!(layer.k.size(), vec![1, 2, 12, 16], "layer {l}");
        assert_eq!(layer.v.size(), vec![1, 2, 12, 16]);
        assert_eq!(layer.bias.as_ref().unwrap().size(), vec![1, 2, 12]);
    }
    assert_eq!(r.cache.seq_len, 48);
    assert!((r.cache.achieved_fraction() - 0.25).abs() < 1e-12);
    let extra: std::collections::HashMap<_, _> = r.extra.iter().cloned().collect();
    for key in ["fit_seconds", "fit_rel_output_error", "fit_rel_mass_error"] {
        assert!(
            extra.get(key).is_some_and(|v| v.is_finite()),
            "{key} missing"
        );
    }
    let am_err = held_out_error(&s, &r.cache);
    // The same keys without fitting β and values (plain eviction of the RMS-attention keys).
    let plain = build_compressor(
        "attention_matching",
        &table(&[
            ("fit_bias", toml::Value::Boolean(false)),
            ("fit_values", toml::Value::Boolean(false)),
        ]),
    )
    .unwrap()
    .compress(&input(&s, budget))
    .unwrap();
    let plain_err = held_out_error(&s, &plain.cache);
    let evictions = eviction_errors(&s, budget);
    assert!(
        evictions.len() >= 5,
        "too few eviction baselines ran: {evictions:?}"
    );
    let best = evictions.iter().map(|(_, e)| *e).fold(plain_err, f64::min);
    eprintln!("attention_matching {am_err:.4}, same keys unfitted {plain_err:.4}, evictions {evictions:?}");
    assert!(
        am_err < best,
        "attention_matching {am_err} ≥ best eviction {best}"
    );
    // OMP key selection (with the exact NNLS) also beats every eviction baseline
    let omp = build_compressor(
        "attention_matching",
        &table(&[
            ("selection", "omp".into()),
            ("nnls", "lawson_hanson".into()),
        ]),
    )
    .unwrap()
    .compress(&input(&s, budget))
    .unwrap();
    let omp_err = held_out_error(&s, &omp.cache);
    eprintln!("attention_matching (omp) {omp_err:.4}");
    assert!(omp_err < best, "omp {omp_err} ≥ best eviction {best}");
    // deterministic
    let again = am.compress(&input(&s, budget)).unwrap();
    for (a, b) in r.cache.layers.iter().zip(&again.cache.layers) {
        assert!(a.k.equal(&b.k) && a.v.equal(&b.v));
        assert!(a.bias.as_ref().unwrap().equal(b.bias.as_ref().unwrap()));
    }
}

fn kv_fit_params() -> KvFitParams {
    KvFitParams {
        init_params: table(&[("window_size", toml::Value::Integer(4))]),
        steps: 40,
        lr: 0.02,
        ..Default::default()
    }
}

#[test]
fn kv_fit_beats_its_snapkv_start_on_held_out_queries() {
    let s = setup(48);
    let budget = Budget::Fraction(0.25);
    let snap = build_compressor("snapkv", &kv_fit_params().init_params)
        .unwrap()
        .compress(&input(&s, budget))
        .unwrap();
    let snap_err = held_out_error(&s, &snap.cache);
    let fit = KvFit::new(kv_fit_params()).unwrap();
    let r = fit.compress(&input(&s, budget)).unwrap();
    let fit_err = held_out_error(&s, &r.cache);
    let extra: std::collections::HashMap<_, _> = r.extra.iter().cloned().collect();
    eprintln!("kv_fit {fit_err:.4} vs snapkv {snap_err:.4}; extra {extra:?}");
    assert!(fit_err < snap_err, "kv_fit {fit_err} ≥ snapkv {snap_err}");
    assert!(extra["fit_final_loss"] < extra["fit_initial_loss"]);
    assert!(extra["fit_seconds"] >= 0.0);
    for layer in &r.cache.layers {
        assert_eq!(layer.k.size(), vec![1, 2, 12, 16]);
    }
    assert!((r.cache.achieved_fraction() - 0.25).abs() < 1e-12);
}

#[test]
fn kv_fit_adam_loss_decreases_monotonically_at_a_small_learning_rate() {
    let s = setup(32);
    let params = KvFitParams {
        lr: 2e-3,
        steps: 40,
        tol: 0.0,
        patience: 1000,
        ..kv_fit_params()
    };
    let fit = KvFit::new(params.clone()).unwrap();
    let init = build_compressor("snapkv", &params.init_params)
        .unwrap()
        .compress(&input(&s, Budget::Fraction(0.25)))
        .unwrap();
    let probe_state = RepeatProbe::new(&s.model, &s.context, &[], None, 32).unwrap();
    let refs = group_queries(&probe_state.queries(), 2, 0);
    let (_, trace) = fit
        .fit_layer(&s.cache.layers[0], &init.cache.layers[0], &refs)
        .unwrap();
    assert_eq!(trace.losses.len(), 41);
    for w in trace.losses.windows(2) {
        assert!(w[1] <= w[0], "loss went up: {:?}", trace.losses);
    }
    let (first, last) = (trace.losses[0], *trace.losses.last().unwrap());
    assert!(
        last < 0.9 * first,
        "loss {first} → {last}: less than a 10% decrease"
    );
}

#[test]
fn kv_fit_next_token_kl_lowers_the_kl_of_its_snapkv_start() {
    let s = setup(32);
    let params = KvFitParams {
        objective: kvcat_compressors::fitting::kv_fit::Objective::NextTokenKl,
        steps: 15,
        lr: 0.01,
        kl_tokens: 16,
        ..kv_fit_params()
    };
    let r = KvFit::new(params)
        .unwrap()
        .compress(&input(&s, Budget::Fraction(0.25)))
        .unwrap();
    let extra: std::collections::HashMap<_, _> = r.extra.iter().cloned().collect();
    eprintln!("next_token_kl: {extra:?}");
    let (first, last) = (extra["fit_initial_loss"], extra["fit_final_loss"]);
    assert!(first > 0.0 && last < 0.8 * first, "KL {first} → {last}");
    for layer in &r.cache.layers {
        assert_eq!(layer.k.size(), vec![1, 2, 8, 16]);
        assert!(!layer.k.requires_grad() && !layer.bias.as_ref().unwrap().requires_grad());
    }
    assert!((r.cache.achieved_fraction() - 0.25).abs() < 1e-12);
}

#[test]
fn kv_fit_runs_and_improves_under_a_callers_no_grad_guard() {
    // The evaluation loop holds a no_grad guard while compressing; the fit must still train.
    let s = setup(48);
    let budget = Budget::Fraction(0.25);
    let fit = KvFit::new(kv_fit_params()).unwrap();
    let _g = tch::no_grad_guard();
    let r = fit.compress(&input(&s, budget)).unwrap();
    let extra: std::collections::HashMap<_, _> = r.extra.iter().cloned().collect();
    assert!(
        extra["fit_final_loss"] < extra["fit_initial_loss"],
        "{extra:?}"
    );
    assert!(
        !r.cache.layers[0].k.requires_grad(),
        "the fitted cache must be detached"
    );
}
