//! In-process throughput measurements (`kvcat perf`): prefill, decode, compression and
//! training speed of one model on one device, each the median of several timed repeats after
//! warm-up runs. Timing brackets synchronise the CUDA device, so GPU numbers are wall time of
//! finished work, not of queued kernels.

use crate::train::config::{LossConfig, OptimConfig};
use crate::train::loss::batch_loss;
use crate::train::optim::AdamW;
use kvcat_core::compressor::{build_compressor, CompressorDescriptor};
use kvcat_core::error::ResultExt;
use kvcat_core::model::{ForwardOptions, Logits};
use kvcat_core::policy::{build_policy, PolicyDescriptor};
use kvcat_core::{probe, registry, Budget, CompressionInput, KvCache, Model};
use kvcat_core::{Error, Result};
use rand::SeedableRng;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

/// What to measure.
#[derive(Debug, Clone)]
pub struct PerfPlan {
    /// Context lengths of the prefill measurement.
    pub lens: Vec<i64>,
    /// Untimed runs before the timed ones.
    pub warmup: usize,
    /// Timed runs; the median is reported.
    pub repeats: usize,
    /// Context length before decoding, and the number of decoded tokens timed.
    pub decode_context: i64,
    pub decode_tokens: i64,
    /// Context length and budget of the compression measurement, and the compressors
    /// (registered names, default parameters).
    pub compress_len: i64,
    pub budget: Budget,
    pub compressors: Vec<String>,
    /// Training micro-batch `[train_batch, train_len]` and the policies timed.
    pub train_batch: i64,
    pub train_len: i64,
    pub policies: Vec<String>,
}

/// The measurements, as `kvcat perf --json` writes them. Keys of the maps are the context
/// length (`"1024"`), the compressor name and the policy name.
#[derive(Debug, Clone, Serialize, Default)]
pub struct PerfReport {
    pub model: String,
    pub device: String,
    pub dtype: String,
    pub threads: i64,
    /// The C allocator policy of the process (`crate::process_allocator`): `keep-freed` or
    /// `system`.
    pub allocator: String,
    pub warmup: usize,
    pub repeats: usize,
    /// Prompt tokens per second of a prefill (cache filled, last-position logits).
    pub prefill_tok_s: BTreeMap<String, f64>,
    /// Greedy tokens per second after a `decode_context`-token prefill (batch 1).
    pub decode_tok_s: Option<f64>,
    pub decode_context: i64,
    /// Seconds per compression of a `compress_len`-token cache at `budget`.
    pub compress_s: BTreeMap<String, f64>,
    /// Compressors that refused this length and budget, with their error.
    pub compress_failed: BTreeMap<String, String>,
    pub compress_len: i64,
    pub budget: String,
    /// Trained tokens per second (forward, backward, AdamW step) per masking policy.
    pub train_tok_s: BTreeMap<String, f64>,
    pub train_batch: i64,
    pub train_len: i64,
}

/// Blocks until queued work on `device` is done (a no-op on the CPU).
pub fn synchronize(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Median wall seconds of `repeats` runs of `run` after `warmup` untimed ones.
pub fn median_seconds(
    device: Device,
    warmup: usize,
    repeats: usize,
    mut run: impl FnMut() -> Result<()>,
) -> Result<f64> {
    for _ in 0..warmup {
        run()?;
    }
    let mut times = Vec::with_capacity(repeats.max(1));
    for _ in 0..repeats.max(1) {
        synchronize(device);
        let start = Instant::now();
        run()?;
        synchronize(device);
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Random token ids `[b, t]` on the model's device (fixed seed).
fn random_tokens(model: &Model, b: i64, t: i64) -> Tensor {
    tch::manual_seed(t ^ 0x5EED);
    Tensor::randint(
        model.config.vocab_size,
        [b, t],
        (Kind::Int64, model.device()),
    )
}

/// Prompt tokens per second of a `len`-token prefill with last-position logits.
pub fn prefill_tok_s(model: &Model, plan: &PerfPlan, len: i64) -> Result<f64> {
    let _g = tch::no_grad_guard();
    let tokens = random_tokens(model, 1, len);
    let opts = ForwardOptions {
        logits: Logits::Last,
        ..Default::default()
    };
    let secs = median_seconds(model.device(), plan.warmup, plan.repeats, || {
        model.forward_with(&tokens, &mut KvCache::new(), &opts)?;
        Ok(())
    })?;
    Ok(len as f64 / secs)
}

/// Greedy decoding tokens per second after a `decode_context`-token prefill. The next token
/// stays on the device (argmax fed back), so a step makes no host round-trip.
pub fn decode_tok_s(model: &Model, plan: &PerfPlan) -> Result<f64> {
    let _g = tch::no_grad_guard();
    let context = random_tokens(model, 1, plan.decode_context);
    let mut prefilled = KvCache::new();
    let first = model.forward_with(
        &context,
        &mut prefilled,
        &ForwardOptions {
            logits: Logits::Last,
            ..Default::default()
        },
    )?;
    let first = first
        .logits
        .ok_or_else(|| Error::invalid("prefill computed no logits"))?;
    let secs = median_seconds(model.device(), plan.warmup, plan.repeats, || {
        let mut cache = prefilled.copy();
        let mut next = first.argmax(-1, false);
        for _ in 0..plan.decode_tokens {
            let logits = model.forward(&next, &mut cache)?;
            next = logits.argmax(-1, false);
        }
        Ok(())
    })?;
    Ok(plan.decode_tokens as f64 / secs)
}

/// Seconds per compression of a `compress_len`-token cache by each compressor in the plan,
/// and the compressors that failed (e.g. a budget below their protected window) with the error.
pub fn compress_s(model: &Model, plan: &PerfPlan) -> Result<CompressTimes> {
    let _g = tch::no_grad_guard();
    let context = random_tokens(model, 1, plan.compress_len);
    let (cache, hidden) = probe::prefill_for_compression(model, &context)?;
    let input = CompressionInput {
        model,
        cache: &cache,
        context: &context,
        hidden: &hidden,
        question: None,
        budget: plan.budget,
        seed: 0,
    };
    let (mut times, mut failed) = (BTreeMap::new(), BTreeMap::new());
    for name in &plan.compressors {
        let compressor = build_compressor(name, &toml::Table::new())?;
        let secs = median_seconds(model.device(), plan.warmup, plan.repeats, || {
            compressor.compress(&input)?;
            Ok(())
        });
        match secs {
            Ok(secs) => {
                tracing::info!("compress {name}: {secs:.4} s");
                times.insert(name.clone(), secs);
            }
            Err(e) => {
                eprintln!("warning: compressor `{name}` failed: {e:#}");
                failed.insert(name.clone(), format!("{e:#}"));
            }
        }
    }
    Ok((times, failed))
}

/// Seconds per compressor, and the compressors that failed with their error.
pub type CompressTimes = (BTreeMap<String, f64>, BTreeMap<String, String>);

/// One training micro-batch to time: the policy (registry name and parameters), the loss
/// weights, the batch shape `[batch, len]`, and the prefix length and kept slots.
pub struct TrainShape<'a> {
    pub policy: &'a str,
    pub policy_params: &'a toml::Table,
    pub loss: &'a LossConfig,
    pub batch: i64,
    pub len: i64,
    pub prefix: i64,
    pub kept: i64,
}

/// Median seconds of one training step on a random micro-batch: the KV-CAT loss, backward,
/// gradient clipping and an AdamW step, as the trainer runs them. The model's weights change.
pub fn train_step_seconds(
    model: &Model,
    shape: &TrainShape,
    warmup: usize,
    repeats: usize,
) -> Result<f64> {
    let name = shape.policy;
    let mut policy = build_policy(name, shape.policy_params)?;
    let policy_vs = nn::VarStore::new(model.device());
    policy.init(&(policy_vs.root() / name), &model.config)?;
    let mut vars: Vec<(String, Tensor)> = model.vs.variables().into_iter().collect();
    vars.extend(policy_vs.variables());
    let optim = OptimConfig::default();
    let mut opt = AdamW::new(vars, &optim);
    let tokens = random_tokens(model, shape.batch, shape.len);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    median_seconds(model.device(), warmup, repeats, || {
        opt.zero_grad();
        let terms = batch_loss(
            model,
            None,
            policy.as_mut(),
            &tokens,
            &tokens,
            shape.prefix,
            shape.kept,
            shape.loss,
            &mut rng,
        )
        .with_context(|| format!("policy `{name}`"))?;
        terms.total.backward();
        opt.clip_grad_norm(optim.clip);
        opt.step(optim.lr);
        Ok(())
    })
}

/// The `kvcat perf` training entry that is not a policy: plain next-token training (policy
/// `none` with only the unmasked term, `w_mask = w_kd = 0`, `w_full = 1`: one forward, one
/// cross-entropy, one backward), the baseline that the KV-CAT loss is compared with and what
/// `tools/perf_hf.py` times for transformers.
pub const PLAIN: &str = "plain";

/// Trained tokens per second of one policy with default parameters and loss weights (or of
/// [`PLAIN`] training), on a `[train_batch, train_len]` micro-batch with prefix `T/2` of
/// which a quarter is kept.
pub fn train_tok_s(model: &Model, plan: &PerfPlan, policy: &str) -> Result<f64> {
    let prefix = (plan.train_len / 2).max(1);
    let plain = LossConfig {
        w_mask: 0.0,
        w_kd: 0.0,
        w_full: 1.0,
        ..LossConfig::default()
    };
    let (policy, loss) = if policy == PLAIN {
        ("none", plain)
    } else {
        (policy, LossConfig::default())
    };
    let shape = TrainShape {
        policy,
        policy_params: &toml::Table::new(),
        loss: &loss,
        batch: plan.train_batch,
        len: plan.train_len,
        prefix,
        kept: (prefix / 4).max(1),
    };
    let secs = train_step_seconds(model, &shape, plan.warmup, plan.repeats)?;
    Ok((plan.train_batch * plan.train_len) as f64 / secs)
}

/// Every registered compressor name.
pub fn all_compressors() -> Result<Vec<String>> {
    let map = registry::all::<CompressorDescriptor>()?;
    Ok(map.keys().map(|k| k.to_string()).collect())
}

/// [`PLAIN`] and every registered policy name.
pub fn all_policies() -> Result<Vec<String>> {
    let map = registry::all::<PolicyDescriptor>()?;
    let names = map.keys().map(|k| k.to_string());
    Ok(std::iter::once(PLAIN.to_string()).chain(names).collect())
}

/// Runs the whole plan: prefill at each length, decode, compression, then training (last,
/// since it changes the weights). Sections with nothing to measure are skipped.
pub fn measure(model: &Model, plan: &PerfPlan) -> Result<PerfReport> {
    let mut report = PerfReport {
        model: model.source.clone(),
        device: kvcat_core::device::device_name(model.device()),
        dtype: kvcat_core::device::dtype_name(model.kind()).to_string(),
        threads: tch::get_num_threads() as i64,
        allocator: crate::process_allocator::in_force().name().to_string(),
        warmup: plan.warmup,
        repeats: plan.repeats,
        decode_context: plan.decode_context,
        compress_len: plan.compress_len,
        budget: plan.budget.to_string(),
        train_batch: plan.train_batch,
        train_len: plan.train_len,
        ..Default::default()
    };
    for &len in &plan.lens {
        let v = prefill_tok_s(model, plan, len).with_context(|| format!("prefill at {len}"))?;
        tracing::info!("prefill {len}: {v:.1} tok/s");
        report.prefill_tok_s.insert(len.to_string(), v);
    }
    if plan.decode_tokens > 0 {
        report.decode_tok_s = Some(decode_tok_s(model, plan).context("decode")?);
    }
    if !plan.compressors.is_empty() {
        (report.compress_s, report.compress_failed) = compress_s(model, plan)?;
    }
    for name in &plan.policies {
        let v = train_tok_s(model, plan, name)?;
        tracing::info!("train {name}: {v:.1} tok/s");
        report.train_tok_s.insert(name.clone(), v);
    }
    Ok(report)
}
