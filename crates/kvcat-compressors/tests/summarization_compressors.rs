//! Summarization compressors on a tiny random checkpoint: `chunk_mean` is exact on a cache of
//! duplicated adjacent slots, `kv_merge` conserves slot counts and keeps its scorer's slots,
//! `prompt_lingua` keeps exactly the budgeted tokens by self-information and never touches the
//! question.

#![allow(clippy::unwrap_used)]

use kvcat_compressors as _;
use kvcat_compressors::fitting::attention_output;
use kvcat_compressors::summarization::prompt_lingua::{select, self_information};
use kvcat_core::compressor::build_compressor;
use kvcat_core::model::{ForwardOptions, Logits};
use kvcat_core::{probe, Budget, CompressionInput, KvCache, LayerCache, LlamaConfig, Model};
use tch::{Device, Kind, Tensor};

fn tiny() -> Model {
    tch::manual_seed(21);
    let cfg = LlamaConfig {
        vocab_size: 89,
        hidden_size: 64,
        intermediate_size: 96,
        head_dim: 16,
        ..LlamaConfig::tiny()
    };
    let m = Model::from_config(&cfg, Device::Cpu, Kind::Float).expect("tiny model");
    let _g = tch::no_grad_guard();
    for l in &m.net.layers {
        for w in [&l.self_attn.q_proj.weight, &l.self_attn.k_proj.weight] {
            let _ = w.shallow_clone().g_mul_scalar_(8.0);
        }
    }
    // a peaked LM head so that self-information varies across tokens
    let _ = m.net.embed_tokens.shallow_clone().g_mul_scalar_(20.0);
    m
}

fn table(pairs: &[(&str, toml::Value)]) -> toml::Table {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

struct Setup {
    model: Model,
    context: Tensor,
    cache: KvCache,
    hidden: Vec<Tensor>,
}

fn setup(t: i64) -> Setup {
    let model = tiny();
    let context = Tensor::randint(89, [1, t], (Kind::Int64, Device::Cpu));
    let (cache, hidden) = probe::prefill_for_compression(&model, &context).expect("prefill");
    Setup {
        model,
        context,
        cache,
        hidden,
    }
}

fn input<'a>(s: &'a Setup, budget: Budget, question: Option<&'a Tensor>) -> CompressionInput<'a> {
    CompressionInput {
        model: &s.model,
        cache: &s.cache,
        context: &s.context,
        hidden: &s.hidden,
        question,
        budget,
        seed: 0,
    }
}

#[test]
fn chunk_mean_is_exact_on_duplicated_adjacent_slots() {
    let s = setup(12);
    let _g = tch::no_grad_guard();
    // every slot twice in a row: 24 slots, chunks of two at budget 1/2
    let dup = Tensor::arange(12, (Kind::Int64, Device::Cpu)).repeat_interleave_self_int(2, 0, None);
    let layers: Vec<LayerCache> = s
        .cache
        .layers
        .iter()
        .map(|l| {
            let idx = dup.view([1, 1, 24]).expand([1, 2, 24], false).contiguous();
            let mut g = l.gather(&idx);
            g.positions = Tensor::arange(24, (Kind::Int64, Device::Cpu))
                .view([1, 1, 24])
                .expand([1, 2, 24], false)
                .contiguous();
            g
        })
        .collect();
    let doubled = KvCache {
        layers,
        seq_len: 24,
    };
    let ctx = s.context.index_select(1, &dup);
    let inp = CompressionInput {
        model: &s.model,
        cache: &doubled,
        context: &ctx,
        hidden: &[],
        question: None,
        budget: Budget::Fraction(0.5),
        seed: 0,
    };
    let c = build_compressor("chunk_mean", &toml::Table::new())
        .unwrap()
        .compress(&inp)
        .unwrap();
    let q = Tensor::randn([1, 4, 7, 16], (Kind::Float, Device::Cpu)) * 3.0;
    for (l, (orig, comp)) in doubled.layers.iter().zip(&c.cache.layers).enumerate() {
        assert_eq!(comp.k.size(), vec![1, 2, 12, 16]);
        // each chunk records its last position: 1, 3, 5, …
        let want = Tensor::arange_start_step(1, 24, 2, (Kind::Int64, Device::Cpu));
        assert!(comp.positions.get(0).get(1).equal(&want), "layer {l}");
        let bias = comp.bias.as_ref().unwrap();
        assert!((bias - 2f64.ln()).abs().max().double_value(&[]) < 1e-6);
        let a = attention_output(&s.model, l, &q, orig).unwrap();
        let b = attention_output(&s.model, l, &q, comp).unwrap();
        let diff = (a - b).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "layer {l}: max diff {diff}");
    }
    // without the count bias the same cache is still exact (uniform duplicates), and with
    // attention weighting too
    for params in [
        table(&[("bias", "none".into())]),
        table(&[("weighting", "attention".into())]),
    ] {
        let inp2 = CompressionInput { hidden: &[], ..inp };
        let r = build_compressor("chunk_mean", &params)
            .unwrap()
            .compress(&inp2);
        if params.contains_key("weighting") {
            // attention weighting needs the prefill hidden states and says so
            let e = r.expect_err("needs hidden").to_string();
            assert!(e.contains("hidden states"), "{e}");
        } else {
            assert_eq!(r.unwrap().cache.layers[0].k.size()[2], 12);
        }
    }
}

#[test]
fn chunk_mean_uneven_chunks_and_bad_params() {
    let s = setup(23);
    let c = build_compressor("chunk_mean", &toml::Table::new())
        .unwrap()
        .compress(&input(&s, Budget::Slots(5), None))
        .unwrap();
    let l = &c.cache.layers[0];
    assert_eq!(l.k.size(), vec![1, 2, 5, 16]);
    // 23 slots in 5 chunks of sizes 4 or 5: exp(β) sums back to 23
    let total = l
        .bias
        .as_ref()
        .unwrap()
        .exp()
        .sum(Kind::Double)
        .double_value(&[]);
    assert!((total - 46.0).abs() < 1e-4, "{total}");
    assert_eq!(l.positions.int64_value(&[0, 0, 4]), 22);
    let e = build_compressor("chunk_mean", &table(&[("weighting", "max".into())]))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("chunk_mean") && e.contains("uniform"), "{e}");
    let e = build_compressor("kv_merge", &table(&[("nope", 1.into())]))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("nope"), "{e}");
}

#[test]
fn kv_merge_keeps_the_scorer_slots_and_conserves_counts() {
    let s = setup(40);
    let budget = Budget::Fraction(0.25);
    let merged = build_compressor("kv_merge", &toml::Table::new())
        .unwrap()
        .compress(&input(&s, budget, None))
        .unwrap();
    let evicted = build_compressor("observed_attention", &toml::Table::new())
        .unwrap()
        .compress(&input(&s, budget, None))
        .unwrap();
    for (l, (m, e)) in merged
        .cache
        .layers
        .iter()
        .zip(&evicted.cache.layers)
        .enumerate()
    {
        assert_eq!(m.k.size(), vec![1, 2, 10, 16], "layer {l}");
        for h in 0..2 {
            let mp = m.positions.get(0).get(h);
            let ep = e.kept_positions(0)[h as usize].shallow_clone();
            assert!(mp.equal(&ep), "layer {l} head {h}: {mp:?} vs {ep:?}");
        }
        let bias = m.bias.as_ref().unwrap();
        let counts = bias
            .exp()
            .sum_dim_intlist(&[-1i64][..], false, Kind::Double);
        assert!((counts - 40.0).abs().max().double_value(&[]) < 1e-4);
        // a kept slot that attracted nobody (β = 0) keeps its exact key and value
        let orig = &s.cache.layers[l];
        for h in 0..2 {
            for i in 0..10 {
                if bias.double_value(&[0, h, i]).abs() < 1e-6 {
                    let p = m.positions.int64_value(&[0, h, i]);
                    let d = (m.k.get(0).get(h).get(i) - orig.k.get(0).get(h).get(p))
                        .abs()
                        .max()
                        .double_value(&[]);
                    assert!(d < 1e-5, "layer {l} head {h} slot {i}: {d}");
                }
            }
        }
    }
    // identity at full budget
    let full = build_compressor("kv_merge", &toml::Table::new())
        .unwrap()
        .compress(&input(&s, Budget::full(), None))
        .unwrap();
    assert!(full.cache.layers[1].k.equal(&s.cache.layers[1].k));
}

#[test]
fn prompt_lingua_keeps_exactly_the_budget_and_never_the_question() {
    let s = setup(30);
    let question = Tensor::randint(89, [1, 6], (Kind::Int64, Device::Cpu));
    let _g = tch::no_grad_guard();
    let info = self_information(&s.model, &s.hidden[2], &s.context, 0, 7).unwrap();
    assert_eq!(info.size(), vec![1, 30]);
    // chunked self-information equals the full forward's
    let logits = s.model.forward(&s.context, &mut KvCache::new()).unwrap();
    let logp = logits.log_softmax(-1, Kind::Float);
    let want = -logp
        .narrow(1, 0, 29)
        .gather(-1, &s.context.narrow(1, 1, 29).unsqueeze(-1), false)
        .squeeze_dim(-1);
    let got = info.narrow(1, 1, 29);
    assert!((&got - &want).abs().max().double_value(&[]) < 1e-3);
    for budget in [Budget::Fraction(0.3), Budget::Slots(7), Budget::Slots(1)] {
        for positions in ["original", "repacked"] {
            for conditioned in [false, true] {
                let c = build_compressor(
                    "prompt_lingua",
                    &table(&[
                        ("positions", positions.into()),
                        ("condition_on_question", conditioned.into()),
                    ]),
                )
                .unwrap();
                let r = c.compress(&input(&s, budget, Some(&question))).unwrap();
                let t = budget.kept(30);
                assert_eq!(r.cache.seq_len, 30);
                for l in &r.cache.layers {
                    assert_eq!(l.k.size(), vec![1, 2, t, 16], "{budget} {positions}");
                    assert!(l.keep.is_none() && l.bias.is_none());
                }
                let pos = r.cache.layers[0].positions.get(0).get(0);
                let max = pos.max().int64_value(&[]);
                assert!(
                    max < 30,
                    "a slot beyond the context: the question was cached"
                );
                if positions == "repacked" {
                    let want = Tensor::arange_start(30 - t, 30, (Kind::Int64, Device::Cpu));
                    assert!(pos.equal(&want));
                } else {
                    assert_eq!(pos.int64_value(&[0]), 0, "the first token is always kept");
                    if !conditioned {
                        assert!(pos.equal(&select(&info, t, 1).get(0)));
                    }
                }
                // the question is appended after compression, at positions from 30
                let mut cc = r.cache.copy();
                let out = s
                    .model
                    .forward_with(
                        &question,
                        &mut cc,
                        &ForwardOptions {
                            logits: Logits::Last,
                            ..Default::default()
                        },
                    )
                    .unwrap();
                assert!(out.logits.unwrap().isfinite().all().int64_value(&[]) == 1);
                assert_eq!(cc.seq_len, 36);
                assert_eq!(cc.layers[0].positions.int64_value(&[0, 0, t]), 30);
            }
        }
    }
    // original positions: the cache is exactly a prefill of the kept tokens at those positions
    let r = build_compressor("prompt_lingua", &toml::Table::new())
        .unwrap()
        .compress(&input(&s, Budget::Slots(9), None))
        .unwrap();
    let kept = select(&info, 9, 1);
    let ids = s.context.gather(1, &kept, false);
    let mut direct = KvCache::new();
    s.model
        .forward_at(&ids, &kept.get(0), &mut direct, &ForwardOptions::default())
        .unwrap();
    for (a, b) in r.cache.layers.iter().zip(&direct.layers) {
        assert!((&a.k - &b.k).abs().max().double_value(&[]) < 1e-6);
        assert!((&a.v - &b.v).abs().max().double_value(&[]) < 1e-6);
    }
    // kept tokens carry more self-information than dropped ones
    let extra: std::collections::HashMap<_, _> = r.extra.iter().cloned().collect();
    assert!(extra["mean_info_kept"] > extra["mean_info_dropped"]);
}
