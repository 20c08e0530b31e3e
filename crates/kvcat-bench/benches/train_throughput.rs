//! Train-step throughput of every registered policy relative to `none` — a measurement, not a
//! test (a `harness = false` bench target): run with
//! `ROUNDS=8 cargo bench -p kvcat-bench --bench train_throughput`.
//!
//! The model is the architecture of `experiments/train-tiny.toml` (4 layers, d 128, 4/2
//! heads, vocab 1024) at batch 8 × 128 tokens; splits and budgets are drawn as the trainer
//! draws them. Policies run interleaved, round after round, so that load from other processes
//! on a shared machine hits them alike; the median step time is reported.

use kvcat_bench::train::loss::{batch_loss, masked_logits, ntp};
use kvcat_bench::train::optim::AdamW;
use kvcat_bench::train::schedule::{sample_budget, sample_prefix, step_rng, Stream};
use kvcat_bench::train::{BudgetSchedule, LossConfig, OptimConfig, TrainConfig};
use kvcat_compressors as _;
use kvcat_core::policy::build_policy;
use kvcat_core::{registry, KvCache, LlamaConfig, MaskingPolicy, Model, PolicyDescriptor};
use kvcat_policies as _;
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

struct Arm {
    name: String,
    model: Model,
    policy: Box<dyn MaskingPolicy>,
    _pvs: nn::VarStore,
    opt: AdamW,
    times: Vec<f64>,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench` to a `harness = false` bench binary; `cargo test
    // --all-targets` (`make test`) builds and runs it without, and must not sit through a
    // measurement, so without `--bench` it only says how to run it.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("train_throughput: a measurement; run it with `cargo bench -p kvcat-bench --bench train_throughput`");
        return;
    }
    policy_step_throughput();
}

/// Batch shape of every measured step: `B × T` tokens.
const B: i64 = 8;
const T: i64 = 128;

fn policy_step_throughput() {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    let lc = TrainConfig::default().model.config.clone().unwrap();
    for w_full in [1.0, 0.0] {
        let loss = LossConfig {
            w_full,
            ..Default::default()
        };
        let mut arms = build_arms(&lc);
        run_rounds(&mut arms, &lc, &loss, rounds);
        print_table(&mut arms, w_full, rounds);
    }
    forward_backward_split(&lc, rounds);
}

/// One arm per registered policy, each with its own identically initialised model and AdamW.
fn build_arms(lc: &LlamaConfig) -> Vec<Arm> {
    registry::all::<PolicyDescriptor>()
        .unwrap()
        .keys()
        .map(|name| {
            tch::manual_seed(0);
            let model = Model::from_config(lc, Device::Cpu, Kind::Float).unwrap();
            let mut policy = build_policy(name, &toml::Table::new()).unwrap();
            let pvs = nn::VarStore::new(Device::Cpu);
            policy.init(&(pvs.root() / *name), lc).unwrap();
            let mut vars: Vec<(String, Tensor)> = model.vs.variables().into_iter().collect();
            vars.extend(
                pvs.variables()
                    .into_iter()
                    .map(|(n, t)| (format!("policy.{n}"), t)),
            );
            let opt = AdamW::new(vars, &OptimConfig::default());
            Arm {
                name: name.to_string(),
                model,
                policy,
                _pvs: pvs,
                opt,
                times: vec![],
            }
        })
        .collect()
}

/// `rounds` timed steps per arm (after one untimed warm-up round), interleaved: every arm
/// takes the same batch, split and budget in a round.
fn run_rounds(arms: &mut [Arm], lc: &LlamaConfig, loss: &LossConfig, rounds: usize) {
    let budget = BudgetSchedule::LogUniform { min: 0.1, max: 1.0 };
    for round in 0..rounds + 1 {
        tch::manual_seed(round as i64);
        let x = Tensor::randint(lc.vocab_size, [B, T], (Kind::Int64, Device::Cpu));
        let mut srng = step_rng(0, round, 0, Stream::Split);
        let p = sample_prefix(32, 96, &mut srng);
        let kept = sample_budget(&budget, &mut srng).kept(p);
        for arm in arms.iter_mut() {
            let t0 = Instant::now();
            arm.opt.zero_grad();
            let mut prng = step_rng(0, round, 0, Stream::Policy);
            let terms = batch_loss(
                &arm.model,
                None,
                arm.policy.as_mut(),
                &x,
                &x,
                p,
                kept,
                loss,
                &mut prng,
            )
            .unwrap();
            terms.total.backward();
            arm.opt.clip_grad_norm(1.0);
            arm.opt.step(1e-3);
            if round > 0 {
                arm.times.push(t0.elapsed().as_secs_f64());
            }
        }
    }
}

/// The markdown table of median step times, relative to `none`.
fn print_table(arms: &mut [Arm], w_full: f64, rounds: usize) {
    println!("\nw_mask = 1, w_kd = 0, w_full = {w_full}; batch {B} x {T} tokens; {rounds} interleaved rounds");
    println!("| policy | median ms/step | tokens/s | relative to none |");
    println!("|---|---|---|---|");
    let rows: Vec<(String, f64)> = arms
        .iter_mut()
        .map(|arm| (arm.name.clone(), median(&mut arm.times)))
        .collect();
    let none_t = rows
        .iter()
        .find(|(name, _)| name == "none")
        .map_or(0.0, |(_, m)| *m);
    for (name, m) in rows {
        println!(
            "| {name} | {:.0} | {:.0} | {:.2} |",
            m * 1e3,
            (B * T) as f64 / m,
            none_t / m
        );
    }
}

/// Where the time goes: one unmasked vs one masked forward+backward of the same batch.
fn forward_backward_split(lc: &LlamaConfig, rounds: usize) {
    tch::manual_seed(0);
    let model = Model::from_config(lc, Device::Cpu, Kind::Float).unwrap();
    let x = Tensor::randint(lc.vocab_size, [B, T], (Kind::Int64, Device::Cpu));
    let mut pol = build_policy("sink_window", &toml::Table::new()).unwrap();
    let teacher = kvcat_core::ForwardOutput::default();
    let cache = KvCache::new();
    let plan = pol
        .plan(
            &kvcat_core::PolicyInput {
                model: &model,
                tokens: &x,
                prefix_len: 64,
                kept: 16,
                teacher: &teacher,
                cache: &cache,
            },
            &mut step_rng(0, 0, 0, Stream::Policy),
        )
        .unwrap();
    let (mut a, mut m) = (vec![], vec![]);
    for _ in 0..rounds {
        let t0 = Instant::now();
        ntp(&model.forward(&x, &mut KvCache::new()).unwrap(), &x, 1).backward();
        a.push(t0.elapsed().as_secs_f64());
        let t0 = Instant::now();
        ntp(&masked_logits(&model, &x, &plan).unwrap(), &x, 64).backward();
        m.push(t0.elapsed().as_secs_f64());
    }
    println!(
        "\nforward+backward: unmasked (causal SDPA) {:.0} ms, masked (additive layer bias) {:.0} ms",
        median(&mut a) * 1e3,
        median(&mut m) * 1e3
    );
}
