//! `kvcat analyze` on a tiny random model: the oracle curve equals exhaustive search over every
//! subset of a small cache for kept mass (and bounds the best output error from above), no
//! compressor keeps more mass than the oracle, and the CSV and figures are written.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use kvcat_bench::analyze::measures::{kept_outputs, outputs, relative_error};
use kvcat_bench::analyze::profile::{profile_example, ProfileSpec, Sample, ORACLE};
use kvcat_bench::analyze::table::{aggregate, difference};
use kvcat_bench::analyze::write_profile;
use kvcat_compressors as _;
use kvcat_core::compressor::build_compressor;
use kvcat_core::model::ForwardOptions;
use kvcat_core::{Compressor, KvCache, LlamaConfig, Model};
use tch::{Device, Kind, Tensor};

const T: i64 = 8; // context slots: 2^8 subsets per head
const C: i64 = 3; // continuation queries

fn tiny() -> Model {
    tch::manual_seed(5);
    let cfg = LlamaConfig {
        vocab_size: 61,
        intermediate_size: 48,
        max_position_embeddings: 64,
        ..LlamaConfig::tiny()
    };
    Model::from_config(&cfg, Device::Cpu, Kind::Float).unwrap()
}

/// Continuation attention over the context, renormalised, straight from a full forward pass
/// with captured probabilities (an independent path from `probe`): per layer `[kv, g·c, T]`,
/// and the context values `[kv, T, d]`.
fn reference(model: &Model, ctx: &Tensor, cont: &Tensor) -> Vec<(Tensor, Tensor)> {
    let _g = tch::no_grad_guard();
    let mut cache = KvCache::new();
    let out = model
        .forward_with(
            &Tensor::cat(&[ctx, cont], 1),
            &mut cache,
            &ForwardOptions {
                capture_attention: true,
                ..Default::default()
            },
        )
        .unwrap();
    (0..model.layers.len())
        .map(|l| {
            let a = out.attention[l].get(0).narrow(1, T, C).narrow(2, 0, T); // [H, c, T]
            let a = &a / a.sum_dim_intlist(-1, true, Kind::Float);
            let a = a.contiguous().view([2, -1, T]);
            (a, cache.layers[l].v.get(0).narrow(1, 0, T))
        })
        .collect()
}

/// Best kept mass and best output error over all subsets of `k` slots, for one head.
fn brute_force(a: &Tensor, v: &Tensor, k: i64) -> (f64, f64) {
    let (a, v) = (a.unsqueeze(0), v.unsqueeze(0));
    let full = outputs(&a, &v);
    let (mut best_mass, mut best_err) = (f64::NEG_INFINITY, f64::INFINITY);
    for bits in 0u32..(1 << T) {
        if bits.count_ones() as i64 != k {
            continue;
        }
        let m: Vec<bool> = (0..T).map(|s| bits >> s & 1 == 1).collect();
        let mask = Tensor::from_slice(&m).view([1, T]);
        let mass = (&a * mask.to_kind(Kind::Float).unsqueeze(1))
            .sum_dim_intlist(-1, false, Kind::Float)
            .mean(Kind::Float);
        best_mass = best_mass.max(mass.double_value(&[]));
        let err = relative_error(&kept_outputs(&a, &v, &mask), &full).double_value(&[0]);
        best_err = best_err.min(err);
    }
    (best_mass, best_err)
}

fn find(samples: &[Sample], layer: usize, head: i64, metric: &str, method: &str, b: f64) -> f64 {
    samples
        .iter()
        .find(|s| {
            s.layer == layer
                && s.kv_head == head
                && s.metric == metric
                && s.method == method
                && s.budget == Some(b)
        })
        .unwrap_or_else(|| {
            panic!("no {metric}/{method} sample at layer {layer} head {head} budget {b}")
        })
        .value
}

fn compressors() -> Vec<(String, Box<dyn Compressor>)> {
    ["knorm", "random", "keydiff", "kv_merge"]
        .iter()
        .map(|n| {
            (
                n.to_string(),
                build_compressor(n, &toml::Table::new()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn oracle_curve_matches_exhaustive_search_over_subsets() {
    let model = tiny();
    let ctx = Tensor::randint(61, [1, T], (Kind::Int64, Device::Cpu));
    let cont = Tensor::randint(61, [1, C], (Kind::Int64, Device::Cpu));
    let budgets = [0.25, 0.5, 0.75];
    let comps = compressors();
    let spec = ProfileSpec {
        budgets: &budgets,
        compressors: &comps,
        seed: 0,
    };
    let samples = profile_example(&model, &ctx, &cont, &spec).unwrap();
    for (l, (a, v)) in reference(&model, &ctx, &cont).iter().enumerate() {
        for h in 0..2 {
            for &b in &budgets {
                let k = (b * T as f64).floor() as i64;
                let (mass, err) = brute_force(&a.get(h), &v.get(h), k);
                let oracle_mass = find(&samples, l, h, "kept_mass", ORACLE, b);
                assert!(
                    (oracle_mass - mass).abs() < 1e-5,
                    "layer {l} head {h} b {b}: oracle {oracle_mass} vs best {mass}"
                );
                let oracle_err = find(&samples, l, h, "output_rel_error", ORACLE, b);
                assert!(
                    oracle_err >= err - 1e-5,
                    "oracle error {oracle_err} below the exhaustive minimum {err}"
                );
                for (name, _) in &comps {
                    let m = find(&samples, l, h, "kept_mass", name, b);
                    assert!(m <= mass + 1e-5, "{name} keeps {m} > oracle {mass}");
                }
            }
        }
    }
}

#[test]
fn profile_rows_summaries_and_figures_are_written() {
    let model = tiny();
    let budgets = [0.25, 0.5];
    let comps = compressors();
    let spec = ProfileSpec {
        budgets: &budgets,
        compressors: &comps,
        seed: 0,
    };
    let mut samples = Vec::new();
    for _ in 0..2 {
        let ctx = Tensor::randint(61, [1, 12], (Kind::Int64, Device::Cpu));
        let cont = Tensor::randint(61, [1, 4], (Kind::Int64, Device::Cpu));
        samples.extend(profile_example(&model, &ctx, &cont, &spec).unwrap());
    }
    let rows = aggregate("tiny", &samples);
    let auc = rows
        .iter()
        .find(|r| {
            r.metric == "mass_auc" && r.method == ORACLE && r.layer == 1 && r.kv_head == "all"
        })
        .expect("oracle AUC of layer 1");
    assert!(
        auc.value >= 0.5 - 1e-6 && auc.value <= 1.0,
        "oracle AUC {} below uniform",
        auc.value
    );
    for r in rows.iter().filter(|r| r.metric == "key_erank") {
        assert!(
            r.value >= 1.0 && r.value <= 8.0 + 1e-4,
            "effective rank {} outside [1, head_dim]",
            r.value
        );
        assert_eq!(r.n, if r.kv_head == "all" { 4 } else { 2 });
    }
    let diff = difference(&rows, &rows);
    assert_eq!(diff.len(), rows.len());
    assert!(diff.iter().all(|r| r.value == 0.0));
    let out = std::env::temp_dir().join(format!("kvcat-analyze-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let written = write_profile(&out, &rows, Some(&rows)).unwrap();
    for p in &written {
        assert!(
            std::fs::metadata(p).map(|m| m.len() > 0).unwrap_or(false),
            "{} missing",
            p.display()
        );
    }
    let csv = std::fs::read_to_string(out.join("profile.csv")).unwrap();
    assert!(csv.starts_with("model,layer,kv_head,metric,method,budget,value,stderr,n"));
    let _ = std::fs::remove_dir_all(&out);
}
