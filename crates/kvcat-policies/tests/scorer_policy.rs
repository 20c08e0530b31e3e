//! The `scorer` policy against the compressors, found by iterating the scorer registry (so a
//! new scorer plugin is covered automatically): on a tiny random model, the policy's keep mask
//! from the teacher pass over `T` tokens equals the kept set of the compressor of the same
//! name on a separate prefill of the `P`-token prefix, at the same budget — or both refuse
//! the budget. Also: unknown scorers are refused with the known names, parameters resolve.

use kvcat_compressors as _;
use kvcat_compressors::topk::ScorerCompressor;
use kvcat_core::compressor::{build_compressor, build_scorer, ScorerDescriptor};
use kvcat_core::policy::build_policy;
use kvcat_core::registry::{all, get};
use kvcat_core::{
    probe, Budget, CompressionInput, Compressor, CompressorDescriptor, Error, ForwardOptions,
    KvCache, LlamaConfig, MaskPlan, Model, PolicyInput,
};
use kvcat_policies as _;
use rand::{Rng, SeedableRng};
use tch::{Device, Kind, Tensor};

const T: i64 = 200;
const P: i64 = 160;
const POLICY_SEED: u64 = 7;

fn tiny(kind: Kind) -> Model {
    tch::manual_seed(11);
    let cfg = LlamaConfig::tiny();
    Model::from_config(&cfg, Device::Cpu, kind).expect("tiny model")
}

fn tokens(b: i64) -> Tensor {
    tch::manual_seed(12);
    Tensor::randint(97, [b, T], (Kind::Int64, Device::Cpu))
}

fn table(pairs: &[(&str, toml::Value)]) -> toml::Table {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// The policy `scorer` for `name` with scorer parameters `params`, planned on a teacher pass.
fn policy_plan(
    model: &Model,
    x: &Tensor,
    name: &str,
    params: &toml::Table,
    kept: i64,
) -> kvcat_core::Result<MaskPlan> {
    let t = table(&[
        ("scorer", name.into()),
        ("params", toml::Value::Table(params.clone())),
    ]);
    let mut policy = build_policy("scorer", &t)?;
    let needs = policy.needs();
    let mut cache = KvCache::new();
    let out = tch::no_grad(|| {
        model.forward_with(
            x,
            &mut cache,
            &ForwardOptions {
                capture_hidden: needs.hidden,
                capture_queries: needs.queries,
                capture_attention: needs.attention,
                ..Default::default()
            },
        )
    })?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(POLICY_SEED);
    policy.plan(
        &PolicyInput {
            model,
            tokens: x,
            prefix_len: P,
            kept,
            teacher: &out,
            cache: &cache,
        },
        &mut rng,
    )
}

/// The compressor of the same name (or the top-k adapter over the scorer, for a scorer
/// registered without one) on a fresh prefill of the prefix: per layer, its kept set as a
/// `[b, kv_heads, P]` mask.
fn compressor_masks(
    model: &Model,
    x: &Tensor,
    name: &str,
    params: &toml::Table,
    kept: i64,
) -> kvcat_core::Result<Vec<Tensor>> {
    let compressor: Box<dyn Compressor> = if get::<CompressorDescriptor>(name).is_ok() {
        build_compressor(name, params)?
    } else {
        Box::new(ScorerCompressor::new(build_scorer(name, params)?))
    };
    let context = x.narrow(1, 0, P);
    let (cache, hidden) = probe::prefill_for_compression(model, &context)?;
    let seed: u64 = rand::rngs::StdRng::seed_from_u64(POLICY_SEED).random();
    let out = tch::no_grad(|| {
        compressor.compress(&CompressionInput {
            model,
            cache: &cache,
            context: &context,
            hidden: &hidden,
            question: None,
            budget: Budget::slots(kept).expect("budget"),
            seed,
        })
    })?;
    Ok(out
        .cache
        .layers
        .iter()
        .map(|l| {
            let visible = l
                .keep
                .as_ref()
                .map(Tensor::shallow_clone)
                .unwrap_or_else(|| l.positions.ones_like().to_kind(Kind::Bool));
            let pos = l.positions.masked_fill(&visible.logical_not(), 0);
            Tensor::zeros(cache.layers[0].positions.size(), (Kind::Int64, Device::Cpu))
                .scatter_add(2, &pos, &visible.to_kind(Kind::Int64))
                .gt(0)
        })
        .collect())
}

/// Every registered scorer with its defaults, plus small-window variants of the scorers
/// with protected windows so that they are compared at small budgets too.
fn cases() -> Vec<(String, toml::Table)> {
    let mut out: Vec<(String, toml::Table)> = all::<ScorerDescriptor>()
        .expect("scorer registry")
        .keys()
        .map(|n| (n.to_string(), toml::Table::new()))
        .collect();
    out.push(("snapkv".into(), table(&[("window_size", 8.into())])));
    out.push(("streaming_llm".into(), table(&[("n_sink", 2.into())])));
    out
}

fn is_budget_refusal(e: &Error) -> bool {
    matches!(e, Error::Budget { .. })
}

#[test]
fn every_scorer_policy_keeps_what_its_compressor_keeps() {
    let names: Vec<String> = cases().into_iter().map(|c| c.0).collect();
    for want in [
        "knorm",
        "snapkv",
        "streaming_llm",
        "random",
        "tova",
        "keydiff",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "scorer `{want}` not registered: {names:?}"
        );
    }
    let x = tokens(2);
    let mut compared = 0;
    let mut two_scorers: Vec<Tensor> = vec![];
    for kind in [Kind::Double, Kind::Float] {
        let model = tiny(kind);
        for (name, params) in cases() {
            for kept in [3, 40, 100] {
                let what = format!("{name} {params:?} {kind:?} kept {kept}");
                let plan = policy_plan(&model, &x, &name, &params, kept);
                let masks = compressor_masks(&model, &x, &name, &params, kept);
                let (plan, masks) = match (plan, masks) {
                    (Ok(p), Ok(m)) => (p, m),
                    (Err(a), Err(b)) => {
                        assert!(
                            is_budget_refusal(&a) && is_budget_refusal(&b),
                            "{what}: {a} / {b}"
                        );
                        assert!(a.to_string().contains("policy `scorer`"), "{what}: {a}");
                        continue;
                    }
                    (a, b) => panic!("{what}: policy {:?} vs compressor {:?}", a.err(), b.err()),
                };
                assert_eq!(plan.kept, kept, "{what}");
                assert_eq!(plan.keep.len(), masks.len(), "{what}");
                for (l, (p, c)) in plan.keep.iter().zip(&masks).enumerate() {
                    assert_eq!(p.size(), vec![2, 2, P], "{what}");
                    assert!(
                        p.equal(c),
                        "{what}, layer {l}: policy and compressor keep different slots"
                    );
                }
                if kind == Kind::Double
                    && kept == 40
                    && params.is_empty()
                    && (name == "knorm" || name == "keydiff")
                {
                    two_scorers.push(plan.keep[1].shallow_clone());
                }
                compared += 1;
            }
        }
    }
    assert!(compared >= 30, "only {compared} comparisons ran");
    // Different scorers really choose differently (the policy is not ignoring its scorer).
    assert_eq!(two_scorers.len(), 2);
    assert!(!two_scorers[0].equal(&two_scorers[1]));
}

#[test]
fn unknown_scorer_and_bad_scorer_params_are_refused_clearly() {
    let e = build_policy("scorer", &table(&[("scorer", "nope".into())]))
        .err()
        .expect("unknown scorer must fail")
        .to_string();
    for want in ["scorer", "nope", "knorm", "snapkv", "streaming_llm"] {
        assert!(e.contains(want), "`{want}` missing from: {e}");
    }
    let bad = table(&[
        ("scorer", "snapkv".into()),
        (
            "params",
            toml::Value::Table(table(&[("window_size", 0.into())])),
        ),
    ]);
    let e = build_policy("scorer", &bad)
        .err()
        .expect("bad params")
        .to_string();
    assert!(e.contains("snapkv") && e.contains("window_size"), "{e}");
    let e = build_policy("scorer", &table(&[("scorer_name", "knorm".into())]))
        .err()
        .expect("unknown field")
        .to_string();
    assert!(e.contains("scorer_name"), "{e}");
}

#[test]
fn parameters_resolve_with_the_scorers_defaults() {
    let p = build_policy("scorer", &table(&[("scorer", "snapkv".into())])).expect("snapkv");
    let params = p.params();
    assert_eq!(params["scorer"].as_str(), Some("snapkv"));
    let inner = params["params"].as_table().expect("params table");
    assert_eq!(inner["window_size"].as_integer(), Some(64));
    assert_eq!(inner["kernel_size"].as_integer(), Some(5));
    let d = build_policy("scorer", &toml::Table::new()).expect("defaults");
    assert_eq!(d.params()["scorer"].as_str(), Some("knorm"));
    assert!(d.needs().hidden);
}

#[test]
fn a_full_budget_keeps_every_slot_without_scoring() {
    // `snapkv` with its 64-token window would refuse 3 slots, but P slots keep everything.
    let model = tiny(Kind::Float);
    let x = tokens(1);
    let plan = policy_plan(&model, &x, "snapkv", &toml::Table::new(), P).expect("full budget");
    for m in &plan.keep {
        assert_eq!(m.sum(Kind::Int64).int64_value(&[]), 2 * P);
    }
}
