//! `TrainConfig`: the plain-data description of one training run (TOML, `deny_unknown_fields`),
//! its validation, and its content hash for checkpoint caching.

use crate::runtime_spec::{DeviceSpec, DtypeSpec};
use kvcat_core::error::ResultExt;
use kvcat_core::toml_paths::{check_shape, from_table, span_of, PathError};
use kvcat_core::{Budget, Error, LlamaConfig, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// One training run. Build it from TOML with [`TrainConfig::from_toml_file`] or in code
/// (every field is public; [`TrainConfig::default`] is a sane tiny CPU run to modify).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// The starting model.
    pub model: ModelConfig,
    /// The masking policy and its parameters.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// Training data.
    pub data: DataConfig,
    /// Optimiser steps (each of `grad_accum` micro-batches).
    pub steps: usize,
    /// Sequences per micro-batch.
    pub batch_size: i64,
    /// Tokens per sequence `T`.
    pub seq_len: i64,
    /// Micro-batches accumulated per optimiser step.
    #[serde(default = "one")]
    pub grad_accum: usize,
    #[serde(default)]
    pub optim: OptimConfig,
    #[serde(default)]
    pub loss: LossConfig,
    /// How the per-batch budget is sampled.
    #[serde(default)]
    pub budget: BudgetSchedule,
    /// How the prefix/continuation split is sampled.
    #[serde(default)]
    pub split: SplitConfig,
    #[serde(default)]
    pub seed: u64,
    /// `auto`, `cpu`, `cuda` or `cuda:N` (written back as given, so the content hash reads
    /// the same name).
    #[serde(default)]
    pub device: DeviceSpec,
    /// `auto` (f32 on CPU, bf16 on CUDA), `f32`, `bf16` or `f16`.
    #[serde(default)]
    pub dtype: DtypeSpec,
    /// Held-out evaluation.
    #[serde(default)]
    pub eval: EvalConfig,
    /// Save a checkpoint every this many steps (0: only at the end).
    #[serde(default)]
    pub save_every: usize,
}

fn one() -> usize {
    1
}

/// Where the model comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// `"scratch"`, or a path to an HF checkpoint directory or a `.gguf` file.
    pub source: String,
    /// Architecture of a from-scratch model (required for `scratch`, refused otherwise).
    /// `vocab_size` is also the size of the byte-level BPE tokenizer trained on the corpus.
    #[serde(default)]
    pub config: Option<LlamaConfig>,
    /// Tokenizer training for `scratch`.
    #[serde(default)]
    pub tokenizer: TokenizerConfig,
}

/// Byte-level BPE training for from-scratch models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenizerConfig {
    /// Minimum pair frequency for a merge.
    pub min_frequency: u64,
    /// Characters of training text used to learn the merges (from the start of each corpus).
    pub max_chars: usize,
}

impl Default for TokenizerConfig {
    fn default() -> Self {
        TokenizerConfig {
            min_frequency: 2,
            max_chars: 4_000_000,
        }
    }
}

/// A registered masking policy by name, with its parameter table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    pub name: String,
    #[serde(default)]
    pub params: toml::Table,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            name: "none".into(),
            params: toml::Table::new(),
        }
    }
}

/// Training data: corpora plus optional synthetic retrieval sequences.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Corpus names (`shakespeare`, `hotpotqa`, `essays`, resolved under `assets`) or paths to
    /// `.txt` files, directories of `.txt`/`.md` files, or `.jsonl` files (field `text`, or
    /// kvpress columns `context` + `question` + `answer`).
    pub corpora: Vec<String>,
    /// Root of the fetched assets.
    #[serde(default = "default_assets")]
    pub assets: PathBuf,
    /// Fraction of each corpus's tokens (its tail) held out for evaluation.
    #[serde(default = "default_heldout")]
    pub heldout_fraction: f64,
    /// Where tokenized data is cached (default: `<out>/data-cache`).
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// Fraction of training sequences replaced by synthetic retrieval sequences.
    #[serde(default)]
    pub synthetic_fraction: f64,
    /// Where synthetic sequences come from: a registered evaluation task (e.g.
    /// `{ name = "passkey", params = { context_len = 160 } }`), whose examples (context,
    /// question, answer) are packed into training rows, so a model trains on the format it is
    /// evaluated on. Absent: the built-in key-value recall generator ([`super::synthetic`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synthetic_task: Option<SyntheticTask>,
    /// Draw synthetic rows from a fixed pool of this many rows instead of fresh ones (an
    /// ablation: a small pool is memorised rather than retrieved from). Absent: fresh rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synthetic_pool: Option<usize>,
}

/// A registered task used as a source of synthetic training text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyntheticTask {
    pub name: String,
    #[serde(default)]
    pub params: toml::Table,
}

fn default_assets() -> PathBuf {
    PathBuf::from("assets")
}
fn default_heldout() -> f64 {
    0.02
}

/// AdamW with linear warmup and cosine decay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    pub lr: f64,
    /// The cosine decays to `lr · min_lr_ratio`.
    pub min_lr_ratio: f64,
    pub warmup: usize,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Global gradient-norm clip (0: off).
    pub clip: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            lr: 1e-3,
            min_lr_ratio: 0.1,
            warmup: 20,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            clip: 1.0,
        }
    }
}

/// Where the distillation teacher comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TeacherChoice {
    /// The model being trained, unmasked, under stop-gradient.
    #[default]
    Current,
    /// A frozen copy of the starting checkpoint.
    Frozen,
}

/// Loss weights: `w_mask`·NTP(continuation | masked) + `w_kd`·KL(teacher ‖ masked student)
/// + `w_full`·NTP(sequence | unmasked).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossConfig {
    pub w_mask: f64,
    pub w_kd: f64,
    pub w_full: f64,
    /// Softmax temperature of the distillation term.
    pub kd_temperature: f64,
    pub teacher: TeacherChoice,
}

impl Default for LossConfig {
    fn default() -> Self {
        LossConfig {
            w_mask: 1.0,
            w_kd: 0.0,
            w_full: 1.0,
            kd_temperature: 1.0,
            teacher: TeacherChoice::Current,
        }
    }
}

/// The per-batch budget distribution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum BudgetSchedule {
    /// Uniformly one of `values` (fractions like `0.25`, or slot counts like `64`).
    Fixed { values: Vec<Budget> },
    /// A kept fraction uniform in `[min, max]`.
    Uniform { min: f64, max: f64 },
    /// A kept fraction log-uniform in `[min, max]`.
    LogUniform { min: f64, max: f64 },
}

impl Default for BudgetSchedule {
    fn default() -> Self {
        BudgetSchedule::LogUniform { min: 0.1, max: 1.0 }
    }
}

/// The prefix length `P` is uniform over `[min_prefix, max_prefix]` tokens; unset bounds
/// default to `T/4` and `3T/4`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SplitConfig {
    pub min_prefix: Option<i64>,
    pub max_prefix: Option<i64>,
}

/// Held-out evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Evaluate every this many steps (0: only before and after training).
    pub every: usize,
    /// Held-out sequences per evaluation (the first ones, always the same); 0 turns
    /// evaluation off.
    pub sequences: usize,
    /// Budget of the masked held-out loss (a fraction or slot count), or none.
    pub budget: Option<Budget>,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            every: 0,
            sequences: 32,
            budget: Some(Budget::Fraction(0.25)),
        }
    }
}

impl SplitConfig {
    /// The resolved `(min, max)` prefix range for sequences of `seq_len` tokens.
    pub fn range(&self, seq_len: i64) -> (i64, i64) {
        (
            self.min_prefix.unwrap_or((seq_len / 4).max(1)),
            self.max_prefix.unwrap_or((3 * seq_len / 4).max(1)),
        )
    }
}

/// Returns an [`Error::Field`] for `field` (`format!` arguments give the reason) unless
/// `cond` holds.
macro_rules! check {
    ($cond:expr, $field:expr, $($reason:tt)+) => {
        match $cond {
            true => {}
            false => return Err(Error::field($field, format!($($reason)+))),
        }
    };
}

impl TrainConfig {
    /// Reads a TOML file; unknown fields are errors naming the field.
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_toml_str(&text).with_context(|| format!("in {}", path.display()))
    }

    /// Parses TOML text and validates it. An array where a table belongs (`optim = [0.5]`)
    /// is refused, naming the key and its `line:column`, rather than read by position.
    pub fn from_toml_str(text: &str) -> Result<Self> {
        let syntax = |e: toml::de::Error| Error::invalid(e.to_string());
        let table: toml::Table = toml::from_str(text).map_err(syntax)?;
        if let Err(e) = check_shape(&table, &Self::shape()) {
            let at = span_of(text, &e.path)
                .map(|s| {
                    let before = &text[..s.start];
                    let line = before.matches('\n').count() + 1;
                    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                    format!("line {line}, column {col}: ")
                })
                .unwrap_or_default();
            return Err(Error::invalid(format!("{at}{e}")));
        }
        let cfg: TrainConfig = toml::from_str(text).map_err(syntax)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads a config from a TOML table (a manifest's training section, after merging), with
    /// errors at the key path inside it; not validated (call [`TrainConfig::validate`]).
    pub fn from_table(table: &toml::Table) -> std::result::Result<Self, PathError> {
        from_table(table, &Self::shape())
    }

    /// The shape every config is checked against ([`kvcat_core::toml_paths::check_shape`]):
    /// the default config with every optional table present, so each table-typed key is
    /// known to be one.
    pub fn shape() -> toml::Table {
        let mut cfg = TrainConfig::default();
        cfg.data.synthetic_task = Some(SyntheticTask {
            name: String::new(),
            params: toml::Table::new(),
        });
        match toml::Value::try_from(&cfg) {
            Ok(toml::Value::Table(t)) => t,
            _ => toml::Table::new(),
        }
    }

    /// The TOML form of the resolved configuration.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self)
            .map_err(|e| Error::invalid(format!("serialising the train config: {e}")))
    }

    /// Checks every field that can be checked without touching data or the model;
    /// errors name the field. Checked in this order: sizes, model, split, budgets, loss,
    /// optimiser, data, then the policy name.
    pub fn validate(&self) -> Result<()> {
        self.check_sizes()?;
        self.check_model()?;
        let (lo, _) = self.check_split()?;
        self.check_budgets(lo)?;
        self.loss.check()?;
        self.optim.check()?;
        self.data.check()?;
        self.check_names()
    }

    /// `steps`, `batch_size`, `seq_len` and `grad_accum`.
    fn check_sizes(&self) -> Result<()> {
        let t = self.seq_len;
        check!(self.steps >= 1, "steps", "must be at least 1");
        check!(
            self.batch_size >= 1,
            "batch_size",
            "must be at least 1, got {}",
            self.batch_size
        );
        check!(t >= 2, "seq_len", "must be at least 2, got {t}");
        check!(self.grad_accum >= 1, "grad_accum", "must be at least 1");
        Ok(())
    }

    /// `model`: a config for (and only for) a scratch model that fits `seq_len`; otherwise
    /// a source that exists.
    fn check_model(&self) -> Result<()> {
        let t = self.seq_len;
        match (self.model.source.as_str(), &self.model.config) {
            ("scratch", None) => Err(Error::field(
                "model.config",
                "required when `model.source = \"scratch\"`",
            )),
            ("scratch", Some(c)) => {
                c.validate("train config [model.config]")?;
                check!(
                    c.vocab_size >= 260,
                    "model.config.vocab_size",
                    "a byte-level BPE needs at least 260 entries, got {}",
                    c.vocab_size
                );
                if c.max_position_embeddings < t {
                    return Err(Error::invalid(format!(
                        "field `model.config.max_position_embeddings` = {} is below `seq_len` = {t}",
                        c.max_position_embeddings
                    )));
                }
                Ok(())
            }
            (_, Some(_)) => Err(Error::field(
                "model.config",
                format!(
                    "only allowed with `model.source = \"scratch\"` (the checkpoint at `{}` has its own config)",
                    self.model.source
                ),
            )),
            (src, None) => {
                check!(
                    Path::new(src).exists(),
                    "model.source",
                    "`{src}` does not exist (expected \"scratch\", an HF directory or a .gguf file)"
                );
                Ok(())
            }
        }
    }

    /// `split`: a prefix range `[lo, hi]` inside `seq_len`, with a non-empty continuation;
    /// returns it.
    fn check_split(&self) -> Result<(i64, i64)> {
        let t = self.seq_len;
        let (lo, hi) = self.split.range(t);
        check!(lo >= 1, "split.min_prefix", "must be at least 1, got {lo}");
        check!(
            hi < t,
            "split.max_prefix",
            "the prefix ({hi}) must be shorter than `seq_len` = {t} so the continuation is not empty"
        );
        check!(lo <= hi, "split", "min_prefix {lo} exceeds max_prefix {hi}");
        Ok((lo, hi))
    }

    /// `budget` (the training schedule) and `eval.budget`, against the shortest prefix `lo`.
    fn check_budgets(&self, lo: i64) -> Result<()> {
        match &self.budget {
            BudgetSchedule::Fixed { values } => {
                check!(!values.is_empty(), "budget.values", "must not be empty");
                for (i, b) in values.iter().enumerate() {
                    check_budget(b, lo, &format!("budget.values[{i}]"))?;
                }
            }
            BudgetSchedule::Uniform { min, max } | BudgetSchedule::LogUniform { min, max } => {
                for (f, v) in [("budget.min", *min), ("budget.max", *max)] {
                    check!(
                        v.is_finite() && v > 0.0 && v <= 1.0,
                        f,
                        "a kept fraction must lie in (0, 1], got {v}"
                    );
                }
                check!(min <= max, "budget", "min {min} exceeds max {max}");
            }
        }
        if let Some(b) = &self.eval.budget {
            check_budget(b, lo, "eval.budget")?;
        }
        Ok(())
    }

    /// `policy.name` names a registered policy (`device` and `dtype` are enums, checked when
    /// the config is read).
    fn check_names(&self) -> Result<()> {
        kvcat_core::registry::get::<kvcat_core::PolicyDescriptor>(&self.policy.name)
            .context("field `policy.name`")?;
        Ok(())
    }

    /// A hex SHA-256 over a canonical (key-sorted JSON) serialisation of the whole config:
    /// equal configs hash equal whatever the field order of their TOML.
    pub fn content_hash(&self) -> String {
        let value = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        let mut text = String::new();
        canonical_json(&value, &mut text);
        let digest = Sha256::digest(text.as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl LossConfig {
    /// The weights are finite and non-negative, one is positive; the KD temperature is > 0.
    fn check(&self) -> Result<()> {
        for (f, v) in [
            ("loss.w_mask", self.w_mask),
            ("loss.w_kd", self.w_kd),
            ("loss.w_full", self.w_full),
        ] {
            check!(
                v.is_finite() && v >= 0.0,
                f,
                "must be a finite weight >= 0, got {v}"
            );
        }
        check!(
            self.w_mask + self.w_kd + self.w_full > 0.0,
            "loss",
            "at least one of w_mask, w_kd, w_full must be positive"
        );
        check!(
            self.kd_temperature > 0.0 && self.kd_temperature.is_finite(),
            "loss.kd_temperature",
            "must be > 0"
        );
        Ok(())
    }
}

impl OptimConfig {
    /// Learning rate, its floor, the AdamW betas and epsilon, weight decay and clipping.
    fn check(&self) -> Result<()> {
        check!(
            self.lr > 0.0 && self.lr.is_finite(),
            "optim.lr",
            "must be > 0, got {}",
            self.lr
        );
        check!(
            (0.0..=1.0).contains(&self.min_lr_ratio),
            "optim.min_lr_ratio",
            "must lie in [0, 1]"
        );
        check!(
            (0.0..1.0).contains(&self.beta1),
            "optim.beta1",
            "must lie in [0, 1)"
        );
        check!(
            (0.0..1.0).contains(&self.beta2),
            "optim.beta2",
            "must lie in [0, 1)"
        );
        check!(self.eps > 0.0, "optim.eps", "must be > 0");
        check!(
            self.weight_decay >= 0.0,
            "optim.weight_decay",
            "must be >= 0"
        );
        check!(
            self.clip >= 0.0,
            "optim.clip",
            "must be >= 0 (0 turns clipping off)"
        );
        Ok(())
    }
}

impl DataConfig {
    /// At least one corpus, the held-out and synthetic fractions in range, the synthetic
    /// task buildable, and a synthetic pool of at least one row.
    fn check(&self) -> Result<()> {
        check!(
            !self.corpora.is_empty(),
            "data.corpora",
            "name at least one corpus or path"
        );
        check!(
            (0.0..0.5).contains(&self.heldout_fraction),
            "data.heldout_fraction",
            "must lie in [0, 0.5), got {}",
            self.heldout_fraction
        );
        check!(
            (0.0..=1.0).contains(&self.synthetic_fraction),
            "data.synthetic_fraction",
            "must lie in [0, 1], got {}",
            self.synthetic_fraction
        );
        if let Some(t) = &self.synthetic_task {
            kvcat_core::task::build_task(&t.name, &t.params)
                .context("field `data.synthetic_task`")?;
        }
        check!(
            self.synthetic_pool != Some(0),
            "data.synthetic_pool",
            "must be at least 1 (leave it out for fresh rows)"
        );
        Ok(())
    }
}

fn check_budget(b: &Budget, min_prefix: i64, field: &str) -> Result<()> {
    match *b {
        Budget::Fraction(f) => check!(
            f.is_finite() && f > 0.0 && f <= 1.0,
            field,
            "a kept fraction must lie in (0, 1], got {f}"
        ),
        Budget::Slots(n) => {
            check!(n >= 1, field, "a slot budget must be at least 1, got {n}");
            check!(
                n <= min_prefix,
                field,
                "{n} slots exceeds the shortest prefix (`split.min_prefix` = {min_prefix})"
            );
        }
    }
    Ok(())
}

/// Writes `v` as JSON with object keys sorted at every level.
fn canonical_json(v: &serde_json::Value, out: &mut String) {
    match v {
        serde_json::Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::String((*k).clone()).to_string());
                out.push(':');
                canonical_json(&map[*k], out);
            }
            out.push('}');
        }
        serde_json::Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

impl Default for TrainConfig {
    /// A tiny from-scratch CPU run on Shakespeare (4 layers, d 128, T 128).
    fn default() -> Self {
        TrainConfig {
            model: ModelConfig {
                source: "scratch".into(),
                config: Some(LlamaConfig {
                    vocab_size: 1024,
                    hidden_size: 128,
                    intermediate_size: 384,
                    num_hidden_layers: 4,
                    num_attention_heads: 4,
                    num_key_value_heads: 2,
                    head_dim: 32,
                    rms_norm_eps: 1e-5,
                    rope_theta: 10_000.0,
                    max_position_embeddings: 1024,
                    tie_word_embeddings: true,
                    bos_token_id: None,
                    eos_token_ids: vec![],
                }),
                tokenizer: TokenizerConfig::default(),
            },
            policy: PolicyConfig::default(),
            data: DataConfig {
                corpora: vec!["shakespeare".into()],
                assets: default_assets(),
                heldout_fraction: default_heldout(),
                cache_dir: None,
                synthetic_fraction: 0.0,
                synthetic_task: None,
                synthetic_pool: None,
            },
            steps: 200,
            batch_size: 8,
            seq_len: 128,
            grad_accum: 1,
            optim: OptimConfig::default(),
            loss: LossConfig::default(),
            budget: BudgetSchedule::default(),
            split: SplitConfig::default(),
            seed: 0,
            device: DeviceSpec::Cpu,
            dtype: DtypeSpec::Auto,
            eval: EvalConfig::default(),
            save_every: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// `device` and `dtype` serialise as the names a user writes, so the content hash (and
    /// every checkpoint id) reads the same strings as when they were plain strings.
    #[test]
    fn device_and_dtype_serialise_as_written() {
        let mut cfg = TrainConfig::default();
        let json = serde_json::to_value(&cfg).unwrap();
        assert_eq!(
            (&json["device"], &json["dtype"]),
            (&"cpu".into(), &"auto".into())
        );
        for (device, dtype) in [("cuda", "bf16"), ("cuda:0", "f16"), ("auto", "f32")] {
            cfg.device = device.parse().unwrap();
            cfg.dtype = dtype.parse().unwrap();
            let json = serde_json::to_value(&cfg).unwrap();
            assert_eq!(
                (&json["device"], &json["dtype"]),
                (&device.into(), &dtype.into())
            );
        }
    }

    /// A bad name is refused when the config is read, naming the field and the allowed names.
    #[test]
    fn bad_device_or_dtype_names_the_field_and_the_allowed_names() {
        let mut table = toml::Value::try_from(TrainConfig::default())
            .unwrap()
            .as_table()
            .unwrap()
            .clone();
        table.insert("dtype".into(), "f8".into());
        let e = TrainConfig::from_table(&table).unwrap_err();
        assert_eq!(e.path.to_string(), "dtype");
        assert_eq!(
            e.reason,
            "unknown dtype `f8` (allowed: auto, f32, bf16, f16)"
        );
        table.insert("dtype".into(), "f32".into());
        table.insert("device".into(), "tpu".into());
        let e = TrainConfig::from_table(&table).unwrap_err();
        assert_eq!(e.path.to_string(), "device");
        assert!(
            e.reason.contains("(allowed: auto, cpu, cuda, cuda:N)"),
            "{}",
            e.reason
        );
        let text = toml::to_string(&table).unwrap();
        let e = TrainConfig::from_toml_str(&text).unwrap_err().to_string();
        assert!(
            e.contains("device = \"tpu\"") && e.contains("allowed: auto, cpu"),
            "{e}"
        );
    }
}
