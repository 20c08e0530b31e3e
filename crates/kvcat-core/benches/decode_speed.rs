//! Measurement harness (a `harness = false` bench target): greedy decode tokens per second after a
//! uniform-budget eviction (every head keeps the same slots count, no keep mask; what `snapkv`
//! leaves) versus a head-varying one (heads keep different counts, hidden by the keep mask;
//! what `adakv`, `kvzip` leave), on one random-init model, side by side in one run.
//!
//! `cargo bench -p kvcat-core --bench decode_speed`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use kvcat_core::decode::greedy;
use kvcat_core::{KvCache, LlamaConfig, Model};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

const CONTEXT: i64 = 2048;
const KEPT: i64 = 410; // budget 0.2
const NEW_TOKENS: usize = 48;

fn model() -> Model {
    tch::manual_seed(0);
    let cfg = LlamaConfig {
        vocab_size: 1024,
        hidden_size: 256,
        intermediate_size: 768,
        num_hidden_layers: 6,
        num_attention_heads: 8,
        num_key_value_heads: 2,
        head_dim: 32,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        max_position_embeddings: 4096,
        tie_word_embeddings: true,
        bos_token_id: None,
        eos_token_ids: vec![],
    };
    Model::from_config(&cfg, Device::Cpu, Kind::Float).unwrap()
}

/// Every head keeps `KEPT` random slots, in position order.
fn uniform(full: &KvCache) -> KvCache {
    let mut out = full.copy();
    for l in out.layers.iter_mut() {
        let scores = Tensor::rand([1, 2, CONTEXT], (Kind::Float, Device::Cpu));
        let (_, idx) = scores.topk(KEPT, -1, true, true);
        *l = l.gather(&idx.sort(-1, false).0);
    }
    out
}

/// Head 0 keeps 1.5·`KEPT` slots and head 1 keeps 0.5·`KEPT` (same total), stored at the
/// larger width with the rest hidden by the keep mask (the layout of `select_mask`).
fn head_varying(full: &KvCache) -> KvCache {
    let mut out = full.copy();
    let (wide, narrow) = (KEPT * 3 / 2, KEPT / 2);
    for l in out.layers.iter_mut() {
        let scores = Tensor::rand([1, 2, CONTEXT], (Kind::Float, Device::Cpu));
        let (_, idx) = scores.topk(wide, -1, true, true);
        let idx = idx.sort(-1, false).0;
        let mut g = l.gather(&idx);
        let ar = Tensor::arange(wide, (Kind::Int64, Device::Cpu));
        let keep = Tensor::stack(&[ar.lt(wide), ar.lt(narrow)], 0).unsqueeze(0);
        g.keep = Some(keep);
        *l = g;
    }
    out
}

fn tok_per_s(model: &Model, cache: &KvCache, prompt: &Tensor) -> f64 {
    let mut c = cache.copy();
    let t0 = Instant::now();
    let ids = greedy(model, &mut c, prompt, NEW_TOKENS, &[]).unwrap();
    ids.len() as f64 / t0.elapsed().as_secs_f64()
}

fn main() {
    // `cargo bench` passes `--bench` to a `harness = false` bench binary; `cargo test
    // --all-targets` (`make test`) builds and runs it without, and must not sit through a
    // measurement, so without `--bench` it only says how to run it.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("decode_speed: a measurement; run it with `cargo bench -p kvcat-core --bench decode_speed`");
        return;
    }
    decode_tokens_per_second_uniform_vs_head_varying();
}

fn decode_tokens_per_second_uniform_vs_head_varying() {
    let _g = tch::no_grad_guard();
    let m = model();
    let ctx = Tensor::randint(1024, [1, CONTEXT], (Kind::Int64, Device::Cpu));
    let full = m.prefill(&ctx).unwrap();
    let (u, h) = (uniform(&full), head_varying(&full));
    let prompt = Tensor::randint(1024, [1, 4], (Kind::Int64, Device::Cpu));
    tok_per_s(&m, &u, &prompt); // warm-up
    let mut rows = vec![];
    for round in 0..3 {
        let (a, b) = (tok_per_s(&m, &u, &prompt), tok_per_s(&m, &h, &prompt));
        println!("round {round}: uniform {a:.1} tok/s, head-varying {b:.1} tok/s");
        rows.push(b / a);
    }
    rows.sort_by(f64::total_cmp);
    println!("median head-varying / uniform: {:.3}", rows[1]);
}
