//! Invariants every registered compressor must satisfy, found by iterating the registry (so a
//! new plugin is tested automatically): shapes, achieved budget, identity when the budget keeps
//! every slot, determinism under a seed, and clear errors for bad input.

use kvcat_compressors as _;
use kvcat_core::compressor::build_compressor;
use kvcat_core::registry::{all, get};
use kvcat_core::{
    probe, Budget, CompressionInput, CompressorDescriptor, Error, KvCache, LlamaConfig, Model,
};
use tch::{Device, Kind, Tensor};

const CONTEXT: i64 = 200;

fn tiny(kv_heads: i64) -> Model {
    tch::manual_seed(7);
    let cfg = LlamaConfig {
        num_key_value_heads: kv_heads,
        ..LlamaConfig::tiny()
    };
    let mut model = Model::from_config(&cfg, Device::Cpu, Kind::Float).expect("tiny model");
    // summary slots as the `gist` policy learns them, so the `gist` compressor runs too
    let emb = Tensor::randn([8, 32], (Kind::Float, Device::Cpu)) * 0.02;
    kvcat_core::summary::attach_summary(&mut model.net, emb, 16);
    model
}

struct Prefilled {
    model: Model,
    context: Tensor,
    cache: KvCache,
    hidden: Vec<Tensor>,
}

fn prefilled(kv_heads: i64) -> Prefilled {
    let model = tiny(kv_heads);
    let context = Tensor::randint(97, [1, CONTEXT], (Kind::Int64, Device::Cpu));
    let (cache, hidden) = probe::prefill_for_compression(&model, &context).expect("prefill");
    Prefilled {
        model,
        context,
        cache,
        hidden,
    }
}

/// Parameters that keep expensive compressors fast in debug builds (their defaults otherwise).
/// The invariants do not depend on them.
fn test_params(name: &str) -> toml::Table {
    let mut t = toml::Table::new();
    if name == "kv_fit" {
        t.insert("steps".into(), 3.into());
    }
    t
}

fn run(p: &Prefilled, name: &str, budget: Budget, seed: u64) -> kvcat_core::Result<KvCache> {
    let c = build_compressor(name, &test_params(name))?;
    let input = CompressionInput {
        model: &p.model,
        cache: &p.cache,
        context: &p.context,
        hidden: &p.hidden,
        question: None,
        budget,
        seed,
    };
    // No no_grad guard here: gradient-based compressors (kv_fit) manage autograd themselves.
    Ok(c.compress(&input)?.cache)
}

fn names() -> Vec<&'static str> {
    all::<CompressorDescriptor>()
        .expect("registry")
        .keys()
        .copied()
        .collect()
}

fn same(a: &Tensor, b: &Tensor) -> bool {
    a.size() == b.size() && a.to_kind(Kind::Double).equal(&b.to_kind(Kind::Double))
}

#[test]
fn eviction_family_and_wrappers_are_registered() {
    let names = names();
    for want in [
        "random",
        "streaming_llm",
        "knorm",
        "observed_attention",
        "snapkv",
        "tova",
        "expected_attention",
        "keydiff",
        "kvzip",
        "adakv",
        "pyramid",
        "compose",
    ] {
        assert!(names.contains(&want), "`{want}` missing from {names:?}");
    }
}

#[test]
fn full_budget_is_identity_for_every_compressor() {
    let p = prefilled(2);
    for_every_compressor(|name| {
        for budget in [Budget::full(), Budget::slots(10_000).expect("budget")] {
            let out = run(&p, name, budget, 0).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(out.seq_len, p.cache.seq_len, "{name}");
            assert_eq!(out.layers.len(), p.cache.layers.len(), "{name}");
            for (a, b) in out.layers.iter().zip(&p.cache.layers) {
                assert!(same(&a.k, &b.k), "{name} @ {budget}: keys changed");
                assert!(same(&a.v, &b.v), "{name} @ {budget}: values changed");
                assert!(
                    same(&a.positions, &b.positions),
                    "{name}: positions changed"
                );
                let all_visible = a
                    .keep
                    .as_ref()
                    .is_none_or(|k| k.all().int64_value(&[]) != 0);
                assert!(
                    all_visible && a.bias.is_none(),
                    "{name}: mask or bias added"
                );
            }
            assert_eq!(out.achieved_fraction(), 1.0, "{name}");
        }
    });
}

/// Runs `check` for every registered compressor, catching panics, and fails once with the
/// list of every compressor that broke (so one broken plugin does not hide another).
fn for_every_compressor(check: impl Fn(&str)) {
    let mut failures = vec![];
    for name in names() {
        let t0 = std::time::Instant::now();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(name)));
        eprintln!("{name}: {:.2} s", t0.elapsed().as_secs_f64());
        if let Err(e) = r {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(format!("{name}: {msg}"));
        }
    }
    assert!(
        failures.is_empty(),
        "failing compressors:\n{}",
        failures.join("\n")
    );
}

#[test]
fn shapes_budget_and_determinism_for_every_compressor() {
    for kv_heads in [2, 4] {
        let p = prefilled(kv_heads);
        for_every_compressor(|name| {
            for b in [0.5, 0.75] {
                let budget = Budget::fraction(b).expect("budget");
                let want = budget.kept(CONTEXT) as f64 / CONTEXT as f64;
                let out = run(&p, name, budget, 3).unwrap_or_else(|e| panic!("{name} @ {b}: {e}"));
                assert_eq!(
                    out.seq_len, CONTEXT,
                    "{name}: seq_len must stay the original length"
                );
                assert_eq!(out.layers.len(), 2, "{name}");
                for (i, l) in out.layers.iter().enumerate() {
                    let (k, v) = (l.k.size(), l.v.size());
                    assert_eq!(
                        (k[0], k[1], k[3]),
                        (1, kv_heads, 8),
                        "{name} layer {i} keys {k:?}"
                    );
                    assert_eq!(k, v, "{name} layer {i}");
                    assert_eq!(
                        l.positions.size(),
                        vec![1, kv_heads, k[2]],
                        "{name} layer {i}"
                    );
                    assert!(k[2] <= CONTEXT, "{name} layer {i}: {} slots", k[2]);
                    for (h, pos) in l.kept_positions(0).iter().enumerate() {
                        let pos = Vec::<i64>::try_from(pos).expect("positions");
                        assert!(!pos.is_empty(), "{name} layer {i} head {h}: kept nothing");
                        assert!(
                            pos.windows(2).all(|w| w[0] < w[1])
                                && pos.iter().all(|&x| (0..CONTEXT).contains(&x)),
                            "{name} layer {i} head {h}: bad positions {pos:?}"
                        );
                    }
                }
                let achieved = out.achieved_fraction();
                // Per-layer rounding (pyramid) may move the total by a slot per layer.
                assert!(
                    (achieved - want).abs() <= 2.0 / CONTEXT as f64,
                    "{name} @ {b}: achieved {achieved}, asked {want}"
                );
                let again = run(&p, name, budget, 3).expect("second run");
                for (x, y) in out.layers.iter().zip(&again.layers) {
                    assert!(
                        same(&x.positions, &y.positions),
                        "{name}: not deterministic"
                    );
                    assert!(
                        same(&x.k, &y.k) && same(&x.v, &y.v),
                        "{name}: not deterministic"
                    );
                }
                // The compressed cache decodes, positioned from the original length.
                let mut dec = out;
                let next = Tensor::randint(97, [1, 3], (Kind::Int64, Device::Cpu));
                let logits = tch::no_grad(|| p.model.forward(&next, &mut dec)).expect("decode");
                assert!(
                    logits.isfinite().all().int64_value(&[]) != 0,
                    "{name}: non-finite logits"
                );
                assert_eq!(dec.seq_len, CONTEXT + 3, "{name}");
            }
        });
    }
}

#[test]
fn random_depends_on_the_seed() {
    let p = prefilled(2);
    let budget = Budget::fraction(0.5).expect("budget");
    let a = run(&p, "random", budget, 1).expect("random");
    let b = run(&p, "random", budget, 2).expect("random");
    assert!(!same(&a.layers[0].positions, &b.layers[0].positions));
}

#[test]
fn adakv_gives_heads_different_budgets_with_the_safeguard() {
    let p = prefilled(2);
    let out = run(&p, "adakv", Budget::fraction(0.4).expect("budget"), 0).expect("adakv");
    let kept = 80; // floor(200 · 0.4), above SnapKV's 64-slot window
    let safe = 16; // floor(80 · 0.2)
    let mut unequal = false;
    for l in &out.layers {
        let per_head = Vec::<i64>::try_from(l.kept_per_head().get(0)).expect("counts");
        assert_eq!(per_head.iter().sum::<i64>(), 2 * kept);
        assert!(per_head.iter().all(|&n| n >= safe), "{per_head:?}");
        unequal |= per_head[0] != per_head[1];
    }
    assert!(unequal, "adakv kept equal counts in every layer");
}

#[test]
fn unknown_compressor_lists_known_names() {
    let err = build_compressor("no_such_press", &toml::Table::new())
        .err()
        .expect("must fail")
        .to_string();
    assert!(
        err.contains("no_such_press") && err.contains("knorm") && err.contains("snapkv"),
        "{err}"
    );
    assert!(get::<CompressorDescriptor>("streaming_llm").is_ok());
}

#[test]
fn every_compressor_rejects_unknown_parameters() {
    let mut t = toml::Table::new();
    t.insert("definitely_not_a_param".into(), 1.into());
    for name in names() {
        match build_compressor(name, &t) {
            Err(Error::Params {
                name: n, reason, ..
            }) => {
                assert_eq!(n, name);
                assert!(
                    reason.contains("definitely_not_a_param"),
                    "{name}: {reason}"
                );
            }
            Err(other) => panic!("{name}: wrong error kind: {other}"),
            Ok(_) => panic!("{name}: accepted an unknown parameter"),
        }
    }
}

#[test]
fn wrappers_reject_unknown_inner_and_bad_params() {
    let mut t = toml::Table::new();
    t.insert("inner".into(), "nope".into());
    let e = build_compressor("adakv", &t)
        .err()
        .expect("unknown inner")
        .to_string();
    assert!(e.contains("nope") && e.contains("snapkv"), "{e}");
    let mut t = toml::Table::new();
    t.insert("alpha_safeguard".into(), 1.5.into());
    assert!(build_compressor("adakv", &t).is_err());
    let mut t = toml::Table::new();
    t.insert("stages".into(), toml::Value::Array(vec![]));
    assert!(build_compressor("compose", &t).is_err());
    let mut t = toml::Table::new();
    t.insert(
        "stages".into(),
        toml::Value::Array(vec!["knorm".into(), "bogus".into()]),
    );
    let e = build_compressor("compose", &t)
        .err()
        .expect("bogus stage")
        .to_string();
    assert!(e.contains("bogus"), "{e}");
}

#[test]
fn budget_below_the_protected_window_is_an_error() {
    let p = prefilled(2);
    let cases = [
        ("streaming_llm", Budget::slots(3).expect("budget"), "n_sink"),
        (
            "expected_attention",
            Budget::slots(2).expect("budget"),
            "n_sink",
        ),
        (
            "snapkv",
            Budget::fraction(0.25).expect("budget"),
            "window_size",
        ),
    ];
    for (name, budget, what) in cases {
        match run(&p, name, budget, 0) {
            Err(Error::Budget { reason, .. }) => assert!(reason.contains(what), "{name}: {reason}"),
            Err(other) => panic!("{name}: wrong error kind: {other}"),
            Ok(_) => panic!("{name} @ {budget}: accepted a budget below its protected window"),
        }
    }
    // Exactly the protected window is fine.
    let out = run(&p, "streaming_llm", Budget::slots(4).expect("budget"), 0).expect("sinks only");
    let pos = Vec::<i64>::try_from(&out.layers[0].kept_positions(0)[0]).expect("positions");
    assert_eq!(pos, vec![0, 1, 2, 3]);
    // Budgets out of range fail at parse time.
    for bad in ["0", "1.5", "-2", "x"] {
        assert!(bad.parse::<Budget>().is_err(), "{bad}");
    }
}

#[test]
fn streaming_llm_keeps_sinks_and_the_most_recent_slots() {
    let p = prefilled(2);
    let out = run(
        &p,
        "streaming_llm",
        Budget::fraction(0.1).expect("budget"),
        0,
    )
    .expect("run");
    let pos = Vec::<i64>::try_from(&out.layers[1].kept_positions(0)[1]).expect("positions");
    let want: Vec<i64> = (0..4).chain(184..200).collect();
    assert_eq!(pos, want);
}
