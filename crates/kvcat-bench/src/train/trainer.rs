//! The training loop: model and data set-up, AdamW with warmup + cosine, clipping, gradient
//! accumulation, held-out evaluation, progress, checkpoints, resume, and NaN stops.

use super::checkpoint::{self, EvalRecord, TrainerState};
use super::config::{TeacherChoice, TrainConfig};
use super::data::{load_documents, TrainData};
use super::loss::{batch_loss, masked_logits, ntp, LossTerms};
use super::optim::AdamW;
use super::schedule::{learning_rate, sample_budget, sample_prefix, step_rng, Stream};
use super::tokenizer::{train_bpe, EOS};
use indicatif::ProgressBar;
use kvcat_core::device::default_dtype;
use kvcat_core::error::ResultExt;
use kvcat_core::model::ForwardOptions;
use kvcat_core::policy::build_policy;
use kvcat_core::{Error, KvCache, MaskingPolicy, Model, PolicyInput, Result, Tokenizer};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

/// Run-time switches that do not change what is trained.
#[derive(Debug, Clone, Default)]
pub struct TrainRunOptions {
    /// Show an indicatif progress bar with the loss terms and tokens/s.
    pub progress: bool,
    /// Continue from the checkpoint in the output directory (a fresh start if there is none).
    pub resume: bool,
    /// Stop (with a checkpoint) after this many completed steps, as if interrupted.
    pub stop_after: Option<usize>,
}

/// One logged optimiser step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepLog {
    pub step: usize,
    pub lr: f64,
    /// The weighted total loss, averaged over micro-batches.
    pub loss: f64,
    pub mask: Option<f64>,
    pub kd: Option<f64>,
    pub full: Option<f64>,
    pub reg: Option<f64>,
    pub grad_norm: f64,
    /// Mean kept fraction of the prefix.
    pub kept_fraction: f64,
    pub tokens_per_second: f64,
}

/// What a training run did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSummary {
    pub out_dir: PathBuf,
    pub config_hash: String,
    /// Completed optimiser steps (in total, over resumed sessions).
    pub steps: usize,
    pub tokens_seen: i64,
    /// Wall-clock seconds of this session (steps, evaluations, checkpoints).
    pub seconds: f64,
    /// Training tokens per second in this session's optimiser steps (no evaluation or saving).
    pub tokens_per_second: f64,
    /// Held-out losses before training and at the end.
    pub init_eval: Option<EvalRecord>,
    pub final_eval: Option<EvalRecord>,
    pub last: Option<StepLog>,
    /// Whether the run stopped at `stop_after` before `steps`.
    pub interrupted: bool,
}

fn hex16(bytes: &[u8]) -> String {
    bytes.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The end-of-text id used to separate documents, if the tokenizer or model has one.
fn eos_id(model: &Model, tok: &Tokenizer) -> Option<i64> {
    tok.token_id(EOS)
        .or_else(|| model.config.eos_token_ids.first().copied())
        .or_else(|| tok.token_id("</s>"))
}

/// Trains (or reads the cached) byte-level BPE for a from-scratch model.
fn scratch_tokenizer(cfg: &TrainConfig, vocab: usize, cache_dir: &Path) -> Result<Tokenizer> {
    let t = &cfg.model.tokenizer;
    let mut h = Sha256::new();
    h.update(format!("bpe;{vocab};{};{};", t.min_frequency, t.max_chars));
    for (i, spec) in cfg.data.corpora.iter().enumerate() {
        let src = super::corpus::resolve(spec, &cfg.data.assets, i)?;
        h.update(super::corpus::fingerprint(&src)?.as_bytes());
    }
    let path = cache_dir.join(format!("tokenizer-{}.json", hex16(&h.finalize())));
    if path.exists() {
        return Tokenizer::from_file(&path);
    }
    let docs: Vec<String> = load_documents(cfg)?.into_iter().flatten().collect();
    let tok = train_bpe(&docs, vocab, t.min_frequency, t.max_chars)?;
    std::fs::create_dir_all(cache_dir).map_err(|e| Error::io(cache_dir, e))?;
    tok.save(&path)?;
    Ok(tok)
}

/// The starting model: a fresh scratch model (seeded) with its trained tokenizer, or a loaded
/// checkpoint, which must bring a tokenizer.
fn starting_model(
    cfg: &TrainConfig,
    device: Device,
    kind: Kind,
    cache_dir: &Path,
) -> Result<Model> {
    if cfg.model.source == "scratch" {
        let mut lc = cfg
            .model
            .config
            .clone()
            .ok_or_else(|| Error::field("model.config", "required for scratch"))?;
        let tok = scratch_tokenizer(cfg, lc.vocab_size as usize, cache_dir)?;
        if tok.vocab_size() as i64 > lc.vocab_size {
            return Err(Error::invalid(format!(
                "field `model.config.vocab_size` = {} is smaller than the trained tokenizer ({})",
                lc.vocab_size,
                tok.vocab_size()
            )));
        }
        if lc.eos_token_ids.is_empty() {
            lc.eos_token_ids = tok.token_id(EOS).into_iter().collect();
        }
        tch::manual_seed(cfg.seed as i64);
        let mut m = Model::from_config(&lc, device, kind)?;
        m.tokenizer = Some(tok);
        Ok(m)
    } else {
        let p = Path::new(&cfg.model.source);
        let m = Model::load(p, device, kind)
            .with_context(|| format!("field `model.source`: loading {}", p.display()))?;
        if m.tokenizer.is_none() {
            return Err(Error::field(
                "model.source",
                format!(
                    "{} has no tokenizer (tokenizer.json or GGUF metadata)",
                    p.display()
                ),
            ));
        }
        Ok(m)
    }
}

/// Held-out losses: unmasked NTP over every window, and continuation NTP under the policy at
/// `eval.budget` with the split at the middle of the configured range. (The benchmark's
/// evaluation of a task's examples is [`crate::evaluate::evaluate_examples`].)
pub fn heldout_loss(
    model: &Model,
    policy: &mut dyn MaskingPolicy,
    batches: &[Tensor],
    cfg: &TrainConfig,
    step: usize,
) -> Result<EvalRecord> {
    let _g = tch::no_grad_guard();
    let (lo, hi) = cfg.split.range(cfg.seq_len);
    let p = (lo + hi) / 2;
    let needs = policy.needs();
    let (mut full, mut masked, mut n) = (0.0, 0.0, 0i64);
    for (i, tokens) in batches.iter().enumerate() {
        let b = tokens.size()[0];
        let mut cache = KvCache::new();
        let out = model.forward_with(
            tokens,
            &mut cache,
            &ForwardOptions {
                capture_queries: needs.queries,
                capture_attention: needs.attention,
                capture_hidden: needs.hidden,
                ..Default::default()
            },
        )?;
        let logits = out
            .logits
            .as_ref()
            .ok_or_else(|| Error::invalid("eval forward computed no logits"))?;
        full += ntp(logits, tokens, 1).double_value(&[]) * b as f64;
        if let Some(budget) = &cfg.eval.budget {
            let mut rng = step_rng(cfg.seed ^ 0xE7A1, i, 0, Stream::Policy);
            let plan = policy.plan(
                &PolicyInput {
                    model,
                    tokens,
                    prefix_len: p,
                    kept: budget.kept(p),
                    teacher: &out,
                    cache: &cache,
                },
                &mut rng,
            )?;
            masked +=
                ntp(&masked_logits(model, tokens, &plan)?, tokens, p).double_value(&[]) * b as f64;
        }
        n += b;
    }
    Ok(EvalRecord {
        step,
        full_nll: full / n as f64,
        masked_nll: cfg.eval.budget.map(|_| masked / n as f64),
        tokens: n * cfg.seq_len,
    })
}

/// The old name of [`heldout_loss`].
#[deprecated(note = "renamed to `heldout_loss`")]
pub fn evaluate(
    model: &Model,
    policy: &mut dyn MaskingPolicy,
    batches: &[Tensor],
    cfg: &TrainConfig,
    step: usize,
) -> Result<EvalRecord> {
    heldout_loss(model, policy, batches, cfg, step)
}

fn check_finite(
    step: usize,
    name: &str,
    v: Option<f64>,
    dir: &Path,
    last_saved: Option<usize>,
) -> Result<()> {
    if let Some(x) = v {
        if !x.is_finite() {
            let ck = match last_saved {
                Some(s) => format!(
                    "the last good checkpoint (step {s}) in {} is intact",
                    dir.display()
                ),
                None => "no checkpoint was written".to_string(),
            };
            return Err(Error::invalid(format!(
                "step {step}: {name} is not finite ({x}); stopping — {ck}"
            )));
        }
    }
    Ok(())
}

/// Trains per `cfg`, writing checkpoints into `out_dir` (an HF-style directory plus training
/// state, see [`checkpoint`]).
pub fn train(cfg: &TrainConfig, out_dir: &Path, opts: &TrainRunOptions) -> Result<TrainSummary> {
    cfg.validate()?;
    let hash = cfg.content_hash();
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let resume_state = resumable_state(out_dir, opts.resume, &hash)?;
    let mut run = Session::open(cfg, out_dir, resume_state.is_some())?;
    let mut state = match resume_state {
        Some(s) => {
            checkpoint::restore(out_dir, &mut run.policy_vs, &mut run.opt, &s)?;
            s
        }
        None => TrainerState {
            config_hash: hash.clone(),
            ..Default::default()
        },
    };
    let mut last_saved = (state.step > 0).then_some(state.step);
    if state.evals.is_empty() && !run.heldout.is_empty() {
        state.evals.push(run.heldout_loss(cfg, 0)?);
    }
    let mut metrics = open_metrics(out_dir, state.step)?;
    let bar = progress_bar(cfg, opts, state.step);
    let tokens_per_step = cfg.batch_size * cfg.seq_len * cfg.grad_accum as i64;
    let session_start = Instant::now();
    let (start_step, mut step_seconds) = (state.step, 0.0);
    let (mut last, mut interrupted) = (None, false);
    while state.step < cfg.steps {
        let t0 = Instant::now();
        let mut log = run.step(cfg, state.step, out_dir, last_saved)?;
        state.step += 1;
        state.tokens_seen += tokens_per_step;
        let dt = t0.elapsed().as_secs_f64();
        state.seconds += dt;
        step_seconds += dt;
        log.tokens_per_second = tokens_per_step as f64 / dt.max(1e-9);
        append_metrics(&mut metrics, out_dir, &log)?;
        bar.set_message(step_message(&log));
        bar.inc(1);
        last = Some(log);
        let done = state.step == cfg.steps;
        let stop = opts.stop_after == Some(state.step) && !done;
        if run.after_step(cfg, &mut state, out_dir, &bar, done || stop)? {
            last_saved = Some(state.step);
        }
        if stop {
            interrupted = true;
            break;
        }
    }
    bar.finish_and_clear();
    let steps_run = (state.step - start_step) as i64;
    Ok(TrainSummary {
        out_dir: out_dir.to_path_buf(),
        config_hash: hash,
        steps: state.step,
        tokens_seen: state.tokens_seen,
        seconds: session_start.elapsed().as_secs_f64(),
        tokens_per_second: (steps_run * tokens_per_step) as f64 / step_seconds.max(1e-9),
        init_eval: state.evals.first().cloned(),
        final_eval: state.evals.last().filter(|e| e.step == state.step).cloned(),
        last,
        interrupted,
    })
}

/// The checkpoint state in `out_dir` to resume from: `None` for a fresh start; an error when
/// there is one but `resume` is off, or it was trained with another configuration.
fn resumable_state(out_dir: &Path, resume: bool, hash: &str) -> Result<Option<TrainerState>> {
    match (checkpoint::read_state(out_dir)?, resume) {
        (Some(s), true) => {
            if s.config_hash != hash {
                return Err(Error::invalid(format!(
                    "{}: the checkpoint was trained with a different configuration (hash {} vs {}); resume needs the same config",
                    out_dir.display(),
                    s.config_hash,
                    hash
                )));
            }
            Ok(Some(s))
        }
        (Some(s), false) => Err(Error::invalid(format!(
            "{} already holds a checkpoint at step {}; pass --resume to continue it or choose another --out",
            out_dir.display(),
            s.step
        ))),
        (None, _) => Ok(None),
    }
}

/// `metrics.jsonl`, rewritten with only the lines of steps up to `step` (a resumed run drops
/// what the interrupted one logged after its last checkpoint).
fn open_metrics(out_dir: &Path, step: usize) -> Result<std::fs::File> {
    let path = out_dir.join("metrics.jsonl");
    let kept: Vec<String> = std::fs::read_to_string(&path)
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            serde_json::from_str::<StepLog>(l)
                .map(|s| s.step <= step)
                .unwrap_or(false)
        })
        .map(String::from)
        .collect();
    let mut file = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
    for l in &kept {
        writeln!(file, "{l}").map_err(|e| Error::io(&path, e))?;
    }
    Ok(file)
}

/// Appends one step's log line to `metrics.jsonl` (opened by [`open_metrics`]).
fn append_metrics(file: &mut std::fs::File, out_dir: &Path, log: &StepLog) -> Result<()> {
    let line = serde_json::to_string(log)
        .map_err(|e| Error::invalid(format!("serialising a step log: {e}")))?;
    writeln!(file, "{line}").map_err(|e| Error::io(out_dir.join("metrics.jsonl"), e))
}

fn progress_bar(cfg: &TrainConfig, opts: &TrainRunOptions, step: usize) -> ProgressBar {
    if !opts.progress {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(cfg.steps as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
    ) {
        b.set_style(style);
    }
    b.set_position(step as u64);
    b
}

fn step_message(log: &StepLog) -> String {
    format!(
        "loss {:.3} mask {} kd {} full {} | {:.0} tok/s | lr {:.1e}",
        log.loss,
        fmt_term(log.mask),
        fmt_term(log.kd),
        fmt_term(log.full),
        log.tokens_per_second,
        log.lr
    )
}

/// What one training run holds: the model, the frozen teacher if any, the policy with its
/// parameters, the optimiser over both, and the data.
struct Session {
    model: Model,
    frozen: Option<Model>,
    policy: Box<dyn MaskingPolicy>,
    policy_vs: nn::VarStore,
    opt: AdamW,
    data: TrainData,
    heldout: Vec<Tensor>,
    device: Device,
}

impl Session {
    /// Builds the model (from `out_dir` when resuming), data, policy and optimiser, seeding in
    /// a fixed order so that a resumed run continues bit for bit.
    fn open(cfg: &TrainConfig, out_dir: &Path, resuming: bool) -> Result<Session> {
        let device = cfg.device.choice().resolve().context("field `device`")?;
        let kind = cfg.dtype.kind().unwrap_or(default_dtype(device));
        let cache_dir = cfg
            .data
            .cache_dir
            .clone()
            .unwrap_or_else(|| out_dir.join("data-cache"));
        let mut policy =
            build_policy(&cfg.policy.name, &cfg.policy.params).context("field `policy`")?;
        let model = if resuming {
            Model::load(out_dir, device, kind)
                .with_context(|| format!("resuming from {}", out_dir.display()))?
        } else {
            starting_model(cfg, device, kind, &cache_dir)?
        };
        let tok = model
            .tokenizer
            .clone()
            .ok_or_else(|| Error::invalid("the model has no tokenizer"))?;
        let data = TrainData::prepare(cfg, &tok, eos_id(&model, &tok), &cache_dir)?;
        let heldout = if cfg.eval.sequences > 0 {
            data.heldout_batches(cfg.eval.sequences, device)?
        } else {
            Vec::new()
        };
        let policy_vs = nn::VarStore::new(device);
        tch::manual_seed(cfg.seed as i64 ^ 0x5EED);
        policy.init(
            &(policy_vs.root() / cfg.policy.name.as_str()),
            &model.config,
        )?;
        let frozen = if cfg.loss.teacher == TeacherChoice::Frozen && cfg.loss.w_kd > 0.0 {
            let mut f = starting_model(cfg, device, kind, &cache_dir)?;
            f.vs.freeze();
            Some(f)
        } else {
            None
        };
        let mut vars: Vec<(String, Tensor)> = model.vs.variables().into_iter().collect();
        vars.extend(
            policy_vs
                .variables()
                .into_iter()
                .map(|(n, t)| (format!("policy.{n}"), t)),
        );
        let opt = AdamW::new(vars, &cfg.optim);
        Ok(Session {
            model,
            frozen,
            policy,
            policy_vs,
            opt,
            data,
            heldout,
            device,
        })
    }

    fn heldout_loss(&mut self, cfg: &TrainConfig, step: usize) -> Result<EvalRecord> {
        heldout_loss(&self.model, self.policy.as_mut(), &self.heldout, cfg, step)
    }

    /// One optimiser step (gradient accumulation over micro-batches, clipping, AdamW at the
    /// scheduled lr); stops with an error naming the last good checkpoint on a non-finite loss.
    fn step(
        &mut self,
        cfg: &TrainConfig,
        step: usize,
        out_dir: &Path,
        last_saved: Option<usize>,
    ) -> Result<StepLog> {
        let _span = tracing::info_span!("train_step", step = step + 1).entered();
        let lr = learning_rate(&cfg.optim, step, cfg.steps);
        self.opt.zero_grad();
        let mut log = StepLog {
            step: step + 1,
            lr,
            ..Default::default()
        };
        for micro in 0..cfg.grad_accum {
            let terms = self.micro_batch(cfg, step, micro)?;
            let total = terms.total.double_value(&[]);
            for (name, v) in [
                ("the masked NTP loss", terms.mask),
                ("the KD loss", terms.kd),
                ("the full NTP loss", terms.full),
                ("the policy regulariser", terms.reg),
                ("the total loss", Some(total)),
            ] {
                check_finite(step + 1, name, v, out_dir, last_saved)?;
            }
            accumulate(&mut log, &terms, total, cfg.grad_accum as f64);
            (terms.total / cfg.grad_accum as f64).backward();
        }
        log.grad_norm = self.opt.clip_grad_norm(cfg.optim.clip);
        let norm = Some(log.grad_norm);
        check_finite(step + 1, "the gradient norm", norm, out_dir, last_saved)?;
        self.opt.step(lr);
        Ok(log)
    }

    /// The loss of micro-batch `micro` of `step`, with its split and budget drawn from the
    /// `(seed, step, micro)` streams.
    fn micro_batch(&mut self, cfg: &TrainConfig, step: usize, micro: usize) -> Result<LossTerms> {
        let (lo, hi) = cfg.split.range(cfg.seq_len);
        let batch = self.data.batch(step, micro, self.device)?;
        let mut srng = step_rng(cfg.seed, step, micro, Stream::Split);
        let p = sample_prefix(lo, hi, &mut srng);
        let kept = sample_budget(&cfg.budget, &mut srng).kept(p);
        let mut prng = step_rng(cfg.seed, step, micro, Stream::Policy);
        batch_loss(
            &self.model,
            self.frozen.as_ref().map(|f| &f.net),
            self.policy.as_mut(),
            &batch.tokens,
            &batch.labels,
            p,
            kept,
            &cfg.loss,
            &mut prng,
        )
        .with_context(|| format!("step {}", step + 1))
    }

    /// Held-out evaluation every `eval.every` steps and at the end, and a checkpoint every
    /// `save_every` steps and when the run ends (`finishing`). Returns whether it saved.
    fn after_step(
        &mut self,
        cfg: &TrainConfig,
        state: &mut TrainerState,
        out_dir: &Path,
        bar: &ProgressBar,
        finishing: bool,
    ) -> Result<bool> {
        let done = state.step == cfg.steps;
        let has_heldout = !self.heldout.is_empty();
        if cfg.eval.every > 0 && state.step % cfg.eval.every == 0 && !done && has_heldout {
            let e = self.heldout_loss(cfg, state.step)?;
            bar.println(format!(
                "step {}: held-out NTP {:.4}{}",
                e.step,
                e.full_nll,
                e.masked_nll
                    .map(|m| format!(", masked {m:.4}"))
                    .unwrap_or_default()
            ));
            state.evals.push(e);
        }
        if !(finishing || (cfg.save_every > 0 && state.step % cfg.save_every == 0)) {
            return Ok(false);
        }
        if done && has_heldout {
            state.evals.push(self.heldout_loss(cfg, state.step)?);
        }
        let (model, policy) = (&self.model, self.policy.as_ref());
        checkpoint::save(
            out_dir,
            model,
            policy,
            &self.policy_vs,
            &self.opt,
            cfg,
            state,
        )?;
        Ok(true)
    }
}

/// Adds one micro-batch's terms to the step's log (means over the `acc` micro-batches).
fn accumulate(log: &mut StepLog, terms: &LossTerms, total: f64, acc: f64) {
    let add = |slot: &mut Option<f64>, v: Option<f64>| {
        if let Some(x) = v {
            *slot = Some(slot.unwrap_or(0.0) + x / acc);
        }
    };
    log.loss += total / acc;
    add(&mut log.mask, terms.mask);
    add(&mut log.kd, terms.kd);
    add(&mut log.full, terms.full);
    add(&mut log.reg, terms.reg);
    log.kept_fraction += terms.kept as f64 / terms.prefix_len as f64 / acc;
}

fn fmt_term(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.3}")).unwrap_or_else(|| "-".into())
}
