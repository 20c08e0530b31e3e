//! The bench manifest: its TOML schema, span-aware parsing, and validation against the
//! plugin registries.
//!
//! A manifest crosses checkpoints (`[[model]]` × `[[policy]]`) with compressors, budgets and
//! tasks:
//!
//! ```toml
//! name = "quickstart"
//! seed = 0
//! device = "cpu"          # auto, cpu, cuda, cuda:N
//! dtype = "f32"           # auto, f32, bf16, f16
//! budgets = [0.1, 0.25, 0.5, "64slots"]
//! seeds = [0, 1, 2]       # optional: train every policy once per seed (see below)
//! eval_batch_size = 8     # optional: examples per prefill and decode step (results do not
//!                         # depend on it)
//!
//! [[model]]
//! name = "tiny"
//! pretrain = { … }        # a TrainConfig table: train from scratch; or
//! # path = "model.gguf"   # an HF directory or GGUF file
//! base = false            # also evaluate the model itself, without continuation
//!
//! [train]                 # shared continued-pretraining section (a partial TrainConfig)
//! steps = 200
//!
//! [[policy]]
//! name = "rand"
//! params = { … }
//! train = { … }           # optional per-policy overrides of [train]
//!
//! [[policy]]
//! name = "matched"        # one `scorer` policy per eviction compressor below
//!
//! [[compressor]]
//! name = "snapkv"
//! params = { window = 8 }
//! # policies = ["gist"]   # optional: cross only with checkpoints of these policy labels
//!
//! [[task]]
//! name = "passkey"
//! n = 20
//! params = { … }
//! # compress_every = 16  # optional: also compress during generation, every 16 new tokens
//!
//! [analyze]               # optional: a compressibility profile of every checkpoint
//! task = "passkey"        # a [[task]] above (its params and seed)
//! n = 8
//! budgets = [0.05, 0.1, 0.2, 0.35, 0.5, 0.75]
//! compressors = ["snapkv"]  # [[compressor]] entries profiled beside the oracle
//! ```
//!
//! `seeds` crosses continued pretraining with training seeds: every `[[policy]]` of every
//! model is trained once per seed (its training table's `seed` set to it), from the same base
//! model, so a policy and `none` trained with the same seed see the same data stream. The
//! report pairs them seed by seed and bootstraps over seeds, then examples. Without `seeds`
//! each policy is trained once with the manifest's `seed`. Training tables must then not set
//! `seed` themselves.
//!
//! [`Manifest::parse`] checks every name, parameter table and budget before anything runs;
//! errors carry `file:line:column` and, for names, every known name. The result is the
//! *resolved* manifest (defaults filled in), which is saved beside the results.

use crate::runtime_spec::{DeviceSpec, DtypeSpec};
use kvcat_core::budget::Budget;
use kvcat_core::compressor::{build_compressor, ScorerDescriptor};
use kvcat_core::policy::build_policy;
use kvcat_core::registry::{get, params_string};
use kvcat_core::task::build_task;
use kvcat_core::toml_paths::{self, KeyPath};
use kvcat_core::{Error, Result};
use serde::{Deserialize, Serialize};
use std::ops::Range;
use std::path::Path;
use toml::Spanned;

/// The compressor name of the uncompressed reference cells (budget 1.0, no compression).
pub const REFERENCE_COMPRESSOR: &str = "none";
/// The pseudo-policy name of a model evaluated as given, without continued pretraining.
pub const BASE_POLICY: &str = "base";
/// The policy every KV-CAT policy is compared against in the report.
pub const BASELINE_POLICY: &str = "none";
/// The `[[policy]]` name that expands to one `scorer` policy per eviction compressor.
pub const MATCHED_POLICY: &str = "matched";
/// The registered policy that trains for an eviction scorer.
pub const SCORER_POLICY: &str = "scorer";

/// A resolved manifest: every name checked, every parameter table filled with defaults.
/// This is what `manifest.toml` beside the results holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    pub seed: u64,
    /// Where the grid runs (`auto` when absent).
    pub device: DeviceSpec,
    /// The compute dtype of every model (`auto` when absent: bf16 on CUDA, f32 on CPU).
    pub dtype: DtypeSpec,
    /// Budgets to sweep, deduplicated, in manifest order (budget 1.0 is the reference).
    pub budgets: Vec<Budget>,
    /// Training seeds crossed with continued pretraining (empty: one run per policy with
    /// `seed`), distinct, in manifest order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seeds: Vec<u64>,
    /// Examples per prefill and decode step (`None`: the evaluator's default). Results do
    /// not depend on it, so an absent value leaves the manifest hash unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_batch_size: Option<usize>,
    /// The shared continued-pretraining table (a partial `TrainConfig`).
    #[serde(default)]
    pub train: toml::Table,
    pub model: Vec<ModelSpec>,
    #[serde(default)]
    pub policy: Vec<PolicySpec>,
    pub compressor: Vec<PluginSpec>,
    pub task: Vec<TaskSpec>,
    /// `[analyze]`: a compressibility profile of every checkpoint beside the end metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analyze: Option<AnalyzeSpec>,
}

/// `[analyze]`: profile every checkpoint ([`crate::analyze`]) on examples of one task, and
/// every policy against `none`; written under `<out>/analyze/<model>/`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnalyzeSpec {
    /// A `[[task]]` entry by name (the first of that name): its parameters and seed.
    pub task: String,
    /// Examples profiled.
    pub n: usize,
    /// Budget fractions of the eviction curves.
    pub budgets: Vec<f64>,
    /// `[[compressor]]` entries by name (with their parameters) profiled beside the oracle.
    #[serde(default)]
    pub compressors: Vec<String>,
}

/// Where a model comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// The label used in result rows.
    pub name: String,
    /// An HF directory or `.gguf` file, when the model is loaded rather than trained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// A `TrainConfig` table, when the model is pretrained from scratch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretrain: Option<toml::Table>,
    /// Whether to evaluate the model itself (policy `base`) besides its continuations.
    #[serde(default)]
    pub base: bool,
}

/// A registered plugin with its resolved parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSpec {
    pub name: String,
    #[serde(default)]
    pub params: toml::Table,
    /// The checkpoints this compressor is crossed with, by policy label (`gist`,
    /// `scorer:knorm`, `base`); empty crosses it with every checkpoint. For a compressor that
    /// needs what one policy learned: the `gist` compressor reads the `gist` policy's summary
    /// embeddings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
}

impl PluginSpec {
    /// Whether this compressor is crossed with checkpoints of the policy labelled `policy`.
    pub fn crosses(&self, policy: &str) -> bool {
        self.policies.is_empty() || self.policies.iter().any(|p| p == policy)
    }
}

/// A masking policy: resolved parameters plus its overrides of the shared `[train]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    pub name: String,
    #[serde(default)]
    pub params: toml::Table,
    #[serde(default)]
    pub train: toml::Table,
}

/// An evaluation task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    pub name: String,
    #[serde(default)]
    pub params: toml::Table,
    /// Number of examples.
    pub n: usize,
    pub seed: u64,
    /// Whether compressors see the question.
    #[serde(default)]
    pub query_aware: bool,
    /// The metric the report plots (default: the task's first metric).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// Also compress during generation: after every `N` generated tokens the cache is
    /// compressed back to the cell's budget ([`kvcat_core::decode_compressing`]); rows gain
    /// `decode_compressions` and `decode_kv_bytes_end`. Absent: prefill-only compression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compress_every: Option<usize>,
}

// ---------------------------------------------------------------------------------------
// Raw (as written) schema, with spans for error messages.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: Option<String>,
    #[serde(default)]
    seed: u64,
    device: Option<Spanned<String>>,
    dtype: Option<Spanned<String>>,
    budgets: Option<Spanned<Vec<Spanned<toml::Value>>>>,
    seeds: Option<Spanned<Vec<Spanned<i64>>>>,
    eval_batch_size: Option<Spanned<usize>>,
    train: Option<Spanned<toml::Table>>,
    #[serde(default)]
    model: Vec<RawModel>,
    #[serde(default)]
    policy: Vec<RawPolicy>,
    #[serde(default)]
    compressor: Vec<RawPlugin>,
    #[serde(default)]
    task: Vec<RawTask>,
    analyze: Option<RawAnalyze>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAnalyze {
    task: Spanned<String>,
    n: Option<Spanned<usize>>,
    budgets: Option<Spanned<Vec<f64>>>,
    compressors: Option<Spanned<Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    name: Spanned<String>,
    path: Option<Spanned<String>>,
    pretrain: Option<Spanned<toml::Table>>,
    #[serde(default)]
    base: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    name: Spanned<String>,
    params: Option<Spanned<toml::Table>>,
    train: Option<Spanned<toml::Table>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlugin {
    name: Spanned<String>,
    params: Option<Spanned<toml::Table>>,
    policies: Option<Spanned<Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTask {
    name: Spanned<String>,
    params: Option<Spanned<toml::Table>>,
    n: Option<Spanned<i64>>,
    seed: Option<u64>,
    query_aware: Option<bool>,
    metric: Option<Spanned<String>>,
    compress_every: Option<Spanned<i64>>,
}

/// Where the manifest has tables and arrays of tables: a value of another kind there is
/// refused ([`toml_paths::check_shape`]) instead of being read by position.
const MANIFEST_SHAPE: &str = r#"
train = {}
[[model]]
pretrain = {}
[[policy]]
params = {}
train = {}
[[compressor]]
params = {}
[[task]]
params = {}
[analyze]
"#;

fn manifest_shape() -> toml::Table {
    toml::from_str(MANIFEST_SHAPE).unwrap_or_default()
}

/// 1-based line and column of byte `offset` in `text` (columns count characters).
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let col = text[line_start..offset].chars().count() + 1;
    (line, col)
}

/// Builds manifest errors that point at `file:line:column`.
struct Locator<'a> {
    file: &'a str,
    text: &'a str,
}

impl Locator<'_> {
    fn at(
        &self,
        span: Option<Range<usize>>,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> Error {
        let file = match span {
            Some(s) => {
                let (l, c) = line_col(self.text, s.start);
                format!("{}:{l}:{c}", self.file)
            }
            None => self.file.to_string(),
        };
        Error::Config {
            file,
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Splits a training error's reason `field `a.b`: why` into the key path and the rest.
fn field_of(reason: &str) -> Option<(KeyPath, String)> {
    let rest = reason.strip_prefix("field `")?;
    let (path, why) = rest.split_once("`: ")?;
    Some((KeyPath::parse(path), why.to_string()))
}

/// Points an error from building a training job's config at the manifest: at the key
/// (`model[0].pretrain.model.config.head_dim`, `policy[1].train.optim.lr`, `train.steps`)
/// when the manifest writes it, else at the table the job was built from.
fn locate_training_error(loc: &Locator, raw: &RawManifest, e: Error) -> Error {
    let (job, field, reason) = match e {
        Error::Config {
            file,
            field,
            reason,
        } => (file, field, reason),
        other => return loc.at(None, "train", other.to_string()),
    };
    let (path, reason) = match field_of(&reason) {
        Some((p, why)) if field.is_empty() || field == "train" => (p, why),
        _ if field == "train" => (KeyPath::default(), reason),
        _ => (KeyPath::parse(&field), reason),
    };
    let label = job.strip_prefix("training job ").unwrap_or(&job);
    let (model, policy) = label.split_once('/').unwrap_or((label, ""));
    let key = |base: &str| KeyPath::parse(base).join(&path);
    let mut candidates: Vec<(KeyPath, Option<Range<usize>>)> = Vec::new();
    if policy == "pretrain" {
        if let Some((i, m)) = raw
            .model
            .iter()
            .enumerate()
            .find(|(_, m)| m.name.get_ref().trim() == model)
        {
            candidates.push((
                key(&format!("model[{i}].pretrain")),
                m.pretrain.as_ref().map(|p| p.span()),
            ));
        }
    } else {
        for (j, p) in raw.policy.iter().enumerate() {
            if p.name.get_ref() == policy {
                candidates.push((key(&format!("policy[{j}].train")), None));
            }
        }
        candidates.push((key("train"), raw.train.as_ref().map(|t| t.span())));
    }
    let reason = format!("training job {label}: {reason}");
    for (full, _) in &candidates {
        if let Some(span) = toml_paths::span_of(loc.text, full) {
            return loc.at(Some(span), full.to_string(), reason);
        }
    }
    match candidates.into_iter().rev().find(|(_, s)| s.is_some()) {
        Some((full, span)) => loc.at(span, full.to_string(), reason),
        None => loc.at(None, "train", reason),
    }
}

fn is_full(b: &Budget) -> bool {
    matches!(b, Budget::Fraction(f) if *f >= 1.0)
}

/// Validates `seeds`: distinct non-negative integers, at least one, only with policies to
/// train, and no training table that sets `seed` itself.
fn parse_seeds(raw: &RawManifest, loc: &Locator) -> Result<Vec<u64>> {
    let Some(list) = &raw.seeds else {
        return Ok(Vec::new());
    };
    let mut seeds: Vec<u64> = Vec::new();
    for (i, v) in list.get_ref().iter().enumerate() {
        let field = format!("seeds[{i}]");
        let s = u64::try_from(*v.get_ref()).map_err(|_| {
            loc.at(
                Some(v.span()),
                &field,
                format!("must be a non-negative integer, got {}", v.get_ref()),
            )
        })?;
        if seeds.contains(&s) {
            return Err(loc.at(Some(v.span()), field, format!("seed {s} is listed twice")));
        }
        seeds.push(s);
    }
    let err = |reason: &str| Err(loc.at(Some(list.span()), "seeds", reason));
    if seeds.is_empty() {
        return err("is empty; give training seeds, e.g. `seeds = [0, 1, 2]`, or drop the field");
    }
    if raw.policy.is_empty() {
        return err("crosses continued pretraining, but there is no [[policy]] to train");
    }
    let train_sets_seed = raw
        .train
        .as_ref()
        .is_some_and(|t| t.get_ref().contains_key("seed"));
    let policy_sets_seed = raw.policy.iter().any(|p| {
        p.train
            .as_ref()
            .is_some_and(|t| t.get_ref().contains_key("seed"))
    });
    if train_sets_seed || policy_sets_seed {
        return err("sets each policy's training seed, so [train] and [[policy]] train tables must not set `seed`");
    }
    Ok(seeds)
}

/// Parses the TOML text into the raw schema: syntax, then table shapes, then fields.
fn read_raw(loc: &Locator, text: &str) -> Result<RawManifest> {
    let table: toml::Table =
        toml::from_str(text).map_err(|e| loc.at(e.span(), "(syntax)", e.message().trim()))?;
    if let Err(e) = toml_paths::check_shape(&table, &manifest_shape()) {
        let span = toml_paths::span_of(text, &e.path);
        return Err(loc.at(span, e.path.to_string(), e.reason));
    }
    toml::from_str(text).map_err(|e| {
        let field = e
            .span()
            .and_then(|s| toml_paths::path_at(text, s.start))
            .map(|p| p.to_string())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "(schema)".into());
        let mut reason = e.message().trim().to_string();
        if reason.starts_with("missing field `name`") {
            reason.push_str(" (a registered name; `kvcat list` shows them all)");
        }
        loc.at(e.span(), field, reason)
    })
}

/// `device` and `dtype` (checked, `auto` when absent), and `eval_batch_size` checked.
fn parse_runtime(loc: &Locator, raw: &RawManifest) -> Result<(DeviceSpec, DtypeSpec)> {
    let device = parse_spanned(loc, "device", raw.device.as_ref())?;
    if let Some(b) = raw.eval_batch_size.as_ref().filter(|b| *b.get_ref() == 0) {
        return Err(loc.at(Some(b.span()), "eval_batch_size", "must be at least 1"));
    }
    let dtype = parse_spanned(loc, "dtype", raw.dtype.as_ref())?;
    Ok((device, dtype))
}

/// A closed-set name (`device`, `dtype`) parsed into its enum; the default when absent,
/// an error at the value's `file:line:column` listing the allowed names when unknown.
fn parse_spanned<T>(loc: &Locator, field: &str, value: Option<&Spanned<String>>) -> Result<T>
where
    T: std::str::FromStr<Err = Error> + Default,
{
    match value {
        Some(v) => v
            .get_ref()
            .parse()
            .map_err(|e: Error| loc.at(Some(v.span()), field, e.to_string())),
        None => Ok(T::default()),
    }
}

/// `budgets`, deduplicated in manifest order; at least one.
fn parse_budgets(loc: &Locator, raw: &RawManifest) -> Result<Vec<Budget>> {
    let budgets_raw = raw.budgets.as_ref().ok_or_else(|| {
        loc.at(
            None,
            "budgets",
            "missing; e.g. `budgets = [0.1, 0.25, 0.5]` (fractions in (0, 1] or slot counts)",
        )
    })?;
    let mut budgets: Vec<Budget> = Vec::new();
    for (i, v) in budgets_raw.get_ref().iter().enumerate() {
        let b: Budget = v
            .get_ref()
            .clone()
            .try_into()
            .map_err(|e: toml::de::Error| {
                loc.at(
                    Some(v.span()),
                    format!("budgets[{i}]"),
                    e.message().trim().to_string(),
                )
            })?;
        if !budgets.contains(&b) {
            budgets.push(b);
        }
    }
    if budgets.is_empty() {
        return Err(loc.at(
            Some(budgets_raw.span()),
            "budgets",
            "is empty; give at least one budget",
        ));
    }
    Ok(budgets)
}

/// The `[[model]]` entries; at least one, and something to evaluate.
fn parse_models(loc: &Locator, raw: &RawManifest) -> Result<Vec<ModelSpec>> {
    if raw.model.is_empty() {
        return Err(loc.at(
            None,
            "model",
            "no [[model]] entry; give `path = ...` or `pretrain = {...}`",
        ));
    }
    let mut models = Vec::new();
    for (i, m) in raw.model.iter().enumerate() {
        let spec = parse_model(loc, i, m, &models)?;
        models.push(spec);
    }
    if raw.policy.is_empty() && !models.iter().any(|m| m.base) {
        return Err(loc.at(
            None,
            "policy",
            "no [[policy]] entry and no model with `base = true`: nothing to evaluate",
        ));
    }
    Ok(models)
}

/// One `[[model]]` entry, checked against the models before it.
fn parse_model(loc: &Locator, i: usize, m: &RawModel, models: &[ModelSpec]) -> Result<ModelSpec> {
    let field = format!("model[{i}]");
    let name = m.name.get_ref().trim().to_string();
    if name.is_empty() || name.contains(',') || name.contains('/') {
        return Err(loc.at(
            Some(m.name.span()),
            format!("{field}.name"),
            "must be non-empty without `,` or `/`",
        ));
    }
    if models.iter().any(|x: &ModelSpec| x.name == name) {
        return Err(loc.at(
            Some(m.name.span()),
            format!("{field}.name"),
            format!("duplicate model name `{name}`"),
        ));
    }
    match (&m.path, &m.pretrain) {
        (Some(_), Some(p)) => {
            return Err(loc.at(
                Some(p.span()),
                field.clone(),
                "give either `path` or `pretrain`, not both",
            ));
        }
        (None, None) => {
            return Err(loc.at(
                Some(m.name.span()),
                field.clone(),
                "give `path` (HF directory or .gguf) or `pretrain` (a training table)",
            ));
        }
        _ => {}
    }
    if let Some(p) = &m.path {
        if !Path::new(p.get_ref()).exists() {
            return Err(loc.at(
                Some(p.span()),
                format!("{field}.path"),
                format!(
                    "`{}` does not exist (an HF directory with config.json, or a .gguf file)",
                    p.get_ref()
                ),
            ));
        }
    }
    Ok(ModelSpec {
        name,
        path: m.path.as_ref().map(|p| p.get_ref().clone()),
        pretrain: m.pretrain.as_ref().map(|p| p.get_ref().clone()),
        base: m.base,
    })
}

/// The `[[policy]]` entries, and where each `matched` entry stands (`(position in the
/// policies, raw index)`), expanded once the compressors are known.
fn parse_policies(
    loc: &Locator,
    raw: &RawManifest,
) -> Result<(Vec<PolicySpec>, Vec<(usize, usize)>)> {
    let mut policies: Vec<PolicySpec> = Vec::new();
    // `matched` entries (position in `policies`, raw index), expanded after the compressors.
    let mut matched: Vec<(usize, usize)> = Vec::new();
    for (i, p) in raw.policy.iter().enumerate() {
        let field = format!("policy[{i}]");
        if p.name.get_ref() == MATCHED_POLICY {
            if let Some(t) = &p.params {
                return Err(loc.at(
                    Some(t.span()),
                    format!("{field}.params"),
                    "`matched` takes no params: each `scorer` policy it makes copies its \
                     compressor's params",
                ));
            }
            matched.push((policies.len(), i));
            continue;
        }
        let built = build_located(loc, &field, &p.name, p.params.as_ref(), build_policy)?;
        let spec = PolicySpec {
            name: built.name().to_string(),
            params: built.params(),
            train: p
                .train
                .as_ref()
                .map(|t| t.get_ref().clone())
                .unwrap_or_default(),
        };
        if policies.contains(&spec) {
            return Err(loc.at(
                Some(p.name.span()),
                field,
                format!("duplicate policy `{}` with the same parameters", spec.name),
            ));
        }
        policies.push(spec);
    }
    Ok((policies, matched))
}

/// Builds plugin `name` of entry `field` from its `params` table (empty when absent) with
/// `build`; an error points at the table when the parameters were wrong, else at the name.
fn build_located<T: ?Sized>(
    loc: &Locator,
    field: &str,
    name: &Spanned<String>,
    params: Option<&Spanned<toml::Table>>,
    build: fn(&str, &toml::Table) -> Result<Box<T>>,
) -> Result<Box<T>> {
    let table = params.map(|t| t.get_ref().clone()).unwrap_or_default();
    build(name.get_ref(), &table).map_err(|e| {
        let (span, f) = match (&e, params) {
            (Error::Params { .. }, Some(t)) => (t.span(), "params"),
            _ => (name.span(), "name"),
        };
        loc.at(Some(span), format!("{field}.{f}"), e.to_string())
    })
}

/// The `[[compressor]]` entries; at least one, no two alike.
fn parse_compressors(loc: &Locator, raw: &RawManifest) -> Result<Vec<PluginSpec>> {
    if raw.compressor.is_empty() {
        return Err(loc.at(None, "compressor", "no [[compressor]] entry"));
    }
    let mut compressors: Vec<PluginSpec> = Vec::new();
    for (i, c) in raw.compressor.iter().enumerate() {
        let field = format!("compressor[{i}]");
        if c.name.get_ref() == REFERENCE_COMPRESSOR {
            return Err(loc.at(Some(c.name.span()), format!("{field}.name"), "`none` is the uncompressed reference, which every grid already holds (budget 1.0); remove this entry"));
        }
        let built = build_located(loc, &field, &c.name, c.params.as_ref(), build_compressor)?;
        let spec = PluginSpec {
            name: built.name().to_string(),
            params: built.params(),
            policies: c
                .policies
                .as_ref()
                .map(|p| p.get_ref().clone())
                .unwrap_or_default(),
        };
        if compressors.contains(&spec) {
            return Err(loc.at(
                Some(c.name.span()),
                field,
                format!(
                    "duplicate compressor `{}` with the same parameters",
                    spec.name
                ),
            ));
        }
        compressors.push(spec);
    }
    Ok(compressors)
}

/// The `[[task]]` entries; at least one, no two alike.
fn parse_tasks(loc: &Locator, raw: &RawManifest) -> Result<Vec<TaskSpec>> {
    if raw.task.is_empty() {
        return Err(loc.at(None, "task", "no [[task]] entry"));
    }
    let mut tasks: Vec<TaskSpec> = Vec::new();
    for (i, t) in raw.task.iter().enumerate() {
        let field = format!("task[{i}]");
        let spec = parse_task(loc, raw, i, t)?;
        if tasks.iter().any(|x| {
            x.name == spec.name
                && x.params == spec.params
                && x.n == spec.n
                && x.seed == spec.seed
                && x.query_aware == spec.query_aware
                && x.compress_every == spec.compress_every
        }) {
            return Err(loc.at(
                Some(t.name.span()),
                field,
                format!("duplicate task `{}` with the same parameters", spec.name),
            ));
        }
        tasks.push(spec);
    }
    Ok(tasks)
}

/// One `[[task]]` entry, its parameters resolved by the task itself.
fn parse_task(loc: &Locator, raw: &RawManifest, i: usize, t: &RawTask) -> Result<TaskSpec> {
    let field = format!("task[{i}]");
    let n = match &t.n {
        Some(n) if *n.get_ref() >= 1 => *n.get_ref() as usize,
        Some(n) => {
            return Err(loc.at(
                Some(n.span()),
                format!("{field}.n"),
                format!("must be at least 1, got {}", n.get_ref()),
            ))
        }
        None => {
            return Err(loc.at(
                Some(t.name.span()),
                format!("{field}.n"),
                "missing: the number of examples",
            ))
        }
    };
    let params = build_located(loc, &field, &t.name, t.params.as_ref(), build_task)?.params();
    let compress_every = match &t.compress_every {
        Some(c) if *c.get_ref() >= 1 => Some(*c.get_ref() as usize),
        Some(c) => {
            return Err(loc.at(
                Some(c.span()),
                format!("{field}.compress_every"),
                format!("must be at least 1 generated token, got {}", c.get_ref()),
            ))
        }
        None => None,
    };
    Ok(TaskSpec {
        name: t.name.get_ref().clone(),
        params,
        n,
        seed: t.seed.unwrap_or(raw.seed),
        query_aware: t.query_aware.unwrap_or(false),
        metric: t.metric.as_ref().map(|m| m.get_ref().clone()),
        compress_every,
    })
}

/// Budget fractions `kvcat analyze` sweeps by default.
pub const ANALYZE_BUDGETS: [f64; 6] = [0.05, 0.1, 0.2, 0.35, 0.5, 0.75];

/// Resolves `[analyze]` against the manifest's tasks and compressors.
fn parse_analyze(
    loc: &Locator,
    raw: Option<&RawAnalyze>,
    m: &Manifest,
) -> Result<Option<AnalyzeSpec>> {
    let Some(a) = raw else {
        return Ok(None);
    };
    let task = a.task.get_ref();
    if !m.task.iter().any(|t| &t.name == task) {
        let known: Vec<&str> = m.task.iter().map(|t| t.name.as_str()).collect();
        return Err(loc.at(
            Some(a.task.span()),
            "analyze.task",
            format!(
                "`{task}` is not a [[task]] of this manifest; known: {}",
                known.join(", ")
            ),
        ));
    }
    let n = a.n.as_ref().map_or(8, |n| *n.get_ref());
    if n == 0 {
        let span = a.n.as_ref().map(|n| n.span());
        return Err(loc.at(span, "analyze.n", "must be at least 1"));
    }
    let budgets = a
        .budgets
        .as_ref()
        .map_or(ANALYZE_BUDGETS.to_vec(), |b| b.get_ref().clone());
    if budgets.is_empty() || budgets.iter().any(|b| !(*b > 0.0 && *b <= 1.0)) {
        let span = a.budgets.as_ref().map(|b| b.span());
        return Err(loc.at(span, "analyze.budgets", "give fractions in (0, 1]"));
    }
    let compressors = a
        .compressors
        .as_ref()
        .map_or(Vec::new(), |c| c.get_ref().clone());
    if let Some(bad) = compressors
        .iter()
        .find(|c| !m.compressor.iter().any(|x| &x.name == *c))
    {
        let known: Vec<&str> = m.compressor.iter().map(|c| c.name.as_str()).collect();
        let span = a.compressors.as_ref().map(|c| c.span());
        return Err(loc.at(
            span,
            "analyze.compressors",
            format!(
                "`{bad}` is not a [[compressor]] of this manifest; known: {}",
                known.join(", ")
            ),
        ));
    }
    Ok(Some(AnalyzeSpec {
        task: task.clone(),
        n,
        budgets,
        compressors,
    }))
}

/// Checks that every label in a compressor's `policies` names a checkpoint's policy.
fn check_compressor_policies(
    loc: &Locator,
    raw: &[RawPlugin],
    checkpoints: &[super::jobs::Checkpoint],
) -> Result<()> {
    let mut known: Vec<&str> = checkpoints.iter().map(|c| c.policy.as_str()).collect();
    known.sort_unstable();
    known.dedup();
    for (i, c) in raw.iter().enumerate() {
        let Some(policies) = &c.policies else {
            continue;
        };
        let field = format!("compressor[{i}].policies");
        if policies.get_ref().is_empty() {
            return Err(loc.at(
                Some(policies.span()),
                field,
                "is empty: list policy labels, or remove it to cross every checkpoint",
            ));
        }
        if let Some(bad) = policies
            .get_ref()
            .iter()
            .find(|p| !known.contains(&p.as_str()))
        {
            return Err(loc.at(
                Some(policies.span()),
                field,
                format!(
                    "`{bad}` is not the label of any checkpoint; known: {}",
                    known.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// Expands `[[policy]] name = "matched"`: one `scorer` policy per compressor that is also a
/// registered scorer (the eviction compressors: `knorm`, `snapkv`, a plugin's…), with that
/// compressor's parameters and the entry's `train` overrides. Every checkpoint meets every
/// compressor, so the grid holds the diagonal (trained for C, evaluated with C) and the
/// off-diagonal cost of a mismatch. Wrappers and non-eviction compressors are skipped.
pub fn matched_policies(
    compressors: &[PluginSpec],
    train: &toml::Table,
) -> Result<Vec<PolicySpec>> {
    let mut out = Vec::new();
    for c in compressors {
        if get::<ScorerDescriptor>(&c.name).is_err() {
            continue;
        }
        let mut params = toml::Table::new();
        params.insert("scorer".into(), c.name.clone().into());
        params.insert("params".into(), toml::Value::Table(c.params.clone()));
        let built = build_policy(SCORER_POLICY, &params)?;
        out.push(PolicySpec {
            name: built.name().to_string(),
            params: built.params(),
            train: train.clone(),
        });
    }
    if out.is_empty() {
        let names: Vec<&str> = compressors.iter().map(|c| c.name.as_str()).collect();
        return Err(Error::invalid(format!(
            "`matched` found no eviction compressor (one registered as a scorer) among [{}]; \
             add one such as `knorm` or `snapkv` (`kvcat list --kind scorer`)",
            names.join(", ")
        )));
    }
    Ok(out)
}

/// Splices the expansion of each `matched` entry (`(position in policies, raw index)`) into
/// `policies`, refusing an expansion that repeats a policy already given.
fn expand_matched(
    loc: &Locator,
    raw: &[RawPolicy],
    matched: &[(usize, usize)],
    compressors: &[PluginSpec],
    policies: &mut Vec<PolicySpec>,
) -> Result<()> {
    for &(at, i) in matched.iter().rev() {
        let p = &raw[i];
        let field = format!("policy[{i}]");
        let train = p
            .train
            .as_ref()
            .map(|t| t.get_ref().clone())
            .unwrap_or_default();
        let specs = matched_policies(compressors, &train)
            .map_err(|e| loc.at(Some(p.name.span()), &field, e.to_string()))?;
        if let Some(dup) = specs.iter().find(|s| policies.contains(s)) {
            return Err(loc.at(
                Some(p.name.span()),
                field,
                format!(
                    "`matched` makes the policy `scorer` with {}, which another [[policy]] \
                     entry already gives",
                    params_string(&dup.params)
                ),
            ));
        }
        policies.splice(at..at, specs);
    }
    Ok(())
}

impl Manifest {
    /// Reads and validates a manifest file.
    pub fn load(path: &Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Manifest::parse(&text, &path.display().to_string())
    }

    /// Parses and validates manifest text; `file` names it in errors.
    ///
    /// Checks, before anything runs: the schema (unknown keys are errors), every policy and
    /// compressor name against the registries and its parameters through the plugin's own
    /// `build`, every budget, device and dtype, task sizes, and name uniqueness.
    pub fn parse(text: &str, file: &str) -> Result<Manifest> {
        let loc = Locator { file, text };
        let raw = read_raw(&loc, text)?;
        let (device, dtype) = parse_runtime(&loc, &raw)?;
        let budgets = parse_budgets(&loc, &raw)?;
        let models = parse_models(&loc, &raw)?;
        let (mut policies, matched) = parse_policies(&loc, &raw)?;
        let compressors = parse_compressors(&loc, &raw)?;
        expand_matched(&loc, &raw.policy, &matched, &compressors, &mut policies)?;
        let tasks = parse_tasks(&loc, &raw)?;
        let seeds = parse_seeds(&raw, &loc)?;
        let manifest = Manifest {
            name: raw.name.clone().unwrap_or_else(|| {
                Path::new(file)
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "bench".into())
            }),
            seed: raw.seed,
            eval_batch_size: raw.eval_batch_size.as_ref().map(|b| *b.get_ref()),
            device,
            dtype,
            budgets,
            seeds,
            train: raw
                .train
                .as_ref()
                .map(|t| t.get_ref().clone())
                .unwrap_or_default(),
            model: models,
            policy: policies,
            compressor: compressors,
            task: tasks,
            analyze: None,
        };
        // Training tables are checked by building every checkpoint's training config.
        let (_, checkpoints) = super::jobs::plan_checkpoints(&manifest)
            .map_err(|e| locate_training_error(&loc, &raw, e))?;
        check_compressor_policies(&loc, &raw.compressor, &checkpoints)?;
        let analyze = parse_analyze(&loc, raw.analyze.as_ref(), &manifest)?;
        Ok(Manifest {
            analyze,
            ..manifest
        })
    }

    /// The budgets crossed with compressors: every budget except the full one, which is the
    /// shared uncompressed reference.
    pub fn compressed_budgets(&self) -> Vec<Budget> {
        self.budgets
            .iter()
            .filter(|b| !is_full(b))
            .copied()
            .collect()
    }

    /// The canonical TOML text of the resolved manifest (what `manifest.toml` holds).
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).map_err(|e| Error::invalid(format!("serialising the manifest: {e}")))
    }

    /// Reads a resolved manifest saved beside results (no registry look-ups).
    pub fn read_resolved(path: &Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        toml::from_str(&text).map_err(|e| {
            let file = match e.span() {
                Some(s) => {
                    let (l, c) = line_col(&text, s.start);
                    format!("{}:{l}:{c}", path.display())
                }
                None => path.display().to_string(),
            };
            Error::Format {
                file,
                reason: e.message().trim().to_string(),
            }
        })
    }

    /// Content hash of the resolved manifest: the run id shared by all shards of one run.
    pub fn run_id(&self) -> Result<String> {
        Ok(super::grid::short_hash(self.to_toml()?.as_bytes()))
    }
}
