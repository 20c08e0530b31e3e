#![allow(clippy::unwrap_used, clippy::expect_used)]

//! Compression during generation ([`kvcat_core::decode_compressing`]) with every registered
//! compressor (found by iterating the registry): a schedule that never fires equals
//! prefill-only compression, and a schedule that fires keeps the cache at its budget.

use kvcat_compressors as _;
use kvcat_core::compressor::build_compressor;
use kvcat_core::decode::greedy;
use kvcat_core::decode_compressing::{greedy_compressing, DecodeCompression, History, Schedule};
use kvcat_core::registry::all;
use kvcat_core::{
    probe, Budget, CompressionInput, Compressor, CompressorDescriptor, KvCache, LlamaConfig, Model,
};
use tch::{Device, Kind, Tensor};

const CONTEXT: i64 = 160;
const NEW: usize = 10;

/// Compressors that rebuild the cache from the uncompressed prefill and so refuse to
/// re-compress an already-compressed cache (documented in `decode_compressing`).
const PREFILL_ONLY: [&str; 3] = ["gist", "kvzip", "prompt_lingua"];

fn tiny() -> Model {
    tch::manual_seed(11);
    let cfg = LlamaConfig::tiny();
    let mut model = Model::from_config(&cfg, Device::Cpu, Kind::Float).expect("tiny model");
    // summary slots as the `gist` policy learns them, so the `gist` compressor runs too
    let emb = Tensor::randn([8, 32], (Kind::Float, Device::Cpu)) * 0.02;
    kvcat_core::summary::attach_summary(&mut model.net, emb, 16);
    model
}

fn compressor(name: &str) -> Box<dyn Compressor> {
    let mut t = toml::Table::new();
    if name == "kv_fit" {
        t.insert("steps".into(), 3.into());
    }
    build_compressor(name, &t).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn names() -> Vec<&'static str> {
    all::<CompressorDescriptor>()
        .expect("registry")
        .keys()
        .copied()
        .collect()
}

struct Setup {
    model: Model,
    context: Tensor,
    prompt: Tensor,
    full: KvCache,
    hidden: Vec<Tensor>,
}

fn setup() -> Setup {
    let model = tiny();
    let context = Tensor::randint(97, [1, CONTEXT], (Kind::Int64, Device::Cpu));
    let prompt = Tensor::randint(97, [1, 2], (Kind::Int64, Device::Cpu));
    let (full, hidden) = probe::prefill_for_compression(&model, &context).expect("prefill");
    Setup {
        model,
        context,
        prompt,
        full,
        hidden,
    }
}

fn prefill_compressed(
    s: &Setup,
    c: &dyn Compressor,
    budget: Budget,
) -> kvcat_core::Result<KvCache> {
    let input = CompressionInput {
        model: &s.model,
        cache: &s.full,
        context: &s.context,
        hidden: &s.hidden,
        question: None,
        budget,
        seed: 0,
    };
    Ok(c.compress(&input)?.cache)
}

fn decode(
    s: &Setup,
    c: &dyn Compressor,
    budget: Budget,
    schedule: Schedule,
) -> kvcat_core::Result<(Vec<i64>, usize, KvCache)> {
    let mut cache = prefill_compressed(s, c, budget)?;
    let mut history = History::new(&s.context, &s.hidden);
    let comp = DecodeCompression {
        compressor: c,
        budget,
        schedule,
        seed: 0,
    };
    let d = greedy_compressing(
        &s.model,
        &mut cache,
        &mut history,
        &s.prompt,
        NEW,
        &[],
        &comp,
    )?;
    assert_eq!(d.kv_bytes_end, cache.kept_bytes());
    Ok((d.ids, d.compressions, cache))
}

#[test]
fn a_schedule_longer_than_the_generation_equals_prefill_only_compression() {
    let s = setup();
    let budget = Budget::fraction(0.5).expect("budget");
    for name in names() {
        let c = compressor(name);
        let Ok(mut plain) = prefill_compressed(&s, c.as_ref(), budget) else {
            panic!("{name}: prefill compression failed");
        };
        let want = greedy(&s.model, &mut plain, &s.prompt, NEW, &[]).expect("greedy");
        for every in [NEW, NEW + 5] {
            let schedule = Schedule {
                every: Some(every),
                max_slots: None,
            };
            let (ids, n, cache) =
                decode(&s, c.as_ref(), budget, schedule).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(n, 0, "{name}: no compression may run for every = {every}");
            assert_eq!(
                ids, want,
                "{name}: generation differs from prefill-only compression"
            );
            assert_eq!(cache.slots(), plain.slots(), "{name}");
            for (a, b) in cache.layers.iter().zip(&plain.layers) {
                assert!(a.k.equal(&b.k) && a.v.equal(&b.v), "{name}: cache differs");
            }
        }
    }
}

#[test]
fn every_registered_compressor_compresses_during_generation() {
    let s = setup();
    let budget = Budget::fraction(0.5).expect("budget");
    let schedule = Schedule {
        every: Some(4),
        max_slots: None,
    };
    for name in names() {
        let c = compressor(name);
        match decode(&s, c.as_ref(), budget, schedule) {
            Ok((ids, n, cache)) => {
                assert!(
                    !PREFILL_ONLY.contains(&name),
                    "{name} was expected to refuse a compressed cache"
                );
                assert_eq!(ids.len(), NEW, "{name}");
                assert_eq!(n, 2, "{name}: compressions after 4 and 8 generated tokens");
                // After the last compression (8 generated tokens fed, seq_len = 160 + 2 + 8),
                // one more token was fed: on average at most floor(0.5 · 170) + 1 visible slots
                // per head (wrappers such as pyramid or adakv spread them unevenly).
                assert_eq!(cache.seq_len, CONTEXT + 2 + NEW as i64 - 1, "{name}");
                let heads = 2 * 2; // layers × KV heads
                assert!(
                    cache.kept_slots() <= (85 + 1) * heads,
                    "{name}: {} visible slots",
                    cache.kept_slots()
                );
            }
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    PREFILL_ONLY.contains(&name),
                    "{name} failed during generation: {msg}"
                );
                assert!(
                    msg.contains(name) && msg.contains("during generation"),
                    "{name}: unclear error {msg}"
                );
            }
        }
    }
}

#[test]
fn a_slot_cap_triggers_compression_to_an_absolute_budget() {
    let s = setup();
    let c = compressor("knorm");
    let budget = Budget::slots(40).expect("budget");
    let schedule = Schedule {
        every: None,
        max_slots: Some(43),
    };
    let (ids, n, cache) = decode(&s, c.as_ref(), budget, schedule).expect("decode");
    assert_eq!(ids.len(), NEW);
    // 40 slots after the prefill; + 2 prompt tokens = 42, then each fed token: 43 is allowed,
    // 44 triggers a compression back to 40 (after tokens 2, 6 of the generation).
    assert_eq!(n, 2);
    assert!(
        cache.slots().iter().all(|&x| x <= 43),
        "{:?}",
        cache.slots()
    );
}
