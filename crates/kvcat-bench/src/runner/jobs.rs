//! Training-job planning: which training jobs a manifest needs and which checkpoints it
//! evaluates.
//!
//! Every `[[model]]` gives a *base* weight source: a file (`path`) or a from-scratch
//! pretraining job (`pretrain`). Every `[[policy]]` then gives one continued-pretraining job
//! per model, initialised from that base, with the shared `[train]` table deep-merged with the
//! policy's own `train` overrides; with the manifest's `seeds`, one job per policy per seed,
//! each with its table's `seed` set. A job's id is a content hash of its resolved training
//! table, its policy and its parent's id, so trained checkpoints are cached across runs.

use super::grid::hash_of;
use super::job_config::{build_config, job_id, Source};
use super::manifest::{Manifest, PolicySpec, BASE_POLICY, SCORER_POLICY};
use kvcat_core::registry::params_string;
use kvcat_core::{Error, Result};
use serde::Serialize;
use std::path::Path;

/// Where a training job starts from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Init {
    /// Random initialisation (pretraining from scratch).
    Scratch,
    /// An HF directory or GGUF file.
    Path(String),
    /// The output of another job (index into [`super::grid::Grid::train_jobs`]).
    Job(usize),
}

/// One training run.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainJob {
    /// Content hash: the checkpoint's cache directory name.
    pub id: String,
    /// `model/policy` or `model/pretrain`, for progress and logs.
    pub label: String,
    pub init: Init,
    /// The resolved training table (shared `[train]` merged with policy overrides, or the
    /// model's `pretrain` table).
    pub table: toml::Table,
    /// The masking policy (`None` for pretraining from scratch).
    pub policy: Option<PolicySpec>,
}

/// Where a checkpoint's weights are.
#[derive(Debug, Clone, PartialEq)]
pub enum Weights {
    /// A file or directory named in the manifest.
    Path(String),
    /// The output of a training job.
    Job(usize),
}

/// A model that is evaluated: one per (model, policy), plus `base` where asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub id: String,
    /// The model's label.
    pub model: String,
    /// The policy's label in result rows ([`policy_label`]: the name, or `scorer:<scorer>`),
    /// or `base` for the model as given.
    pub policy: String,
    pub policy_params: toml::Table,
    /// The training seed of the continuation when the manifest lists `seeds` (`None`
    /// otherwise, and for `base`).
    pub train_seed: Option<u64>,
    pub weights: Weights,
}

/// The label of a policy in result rows and the report: its name, except that a `scorer`
/// policy names its scorer (`scorer:knorm`), so that the rows of a `matched` grid read as
/// "trained for knorm". Two `scorer` policies on one scorer also show their parameters.
pub fn policy_label(m: &Manifest, policy: &PolicySpec) -> String {
    let scorer = (policy.name == SCORER_POLICY)
        .then(|| policy.params.get("scorer").and_then(|v| v.as_str()))
        .flatten();
    let Some(scorer) = scorer else {
        return policy.name.clone();
    };
    let same_scorer = |p: &&PolicySpec| {
        p.name == policy.name && p.params.get("scorer") == policy.params.get("scorer")
    };
    if m.policy.iter().filter(same_scorer).count() > 1 {
        let inner = policy
            .params
            .get("params")
            .and_then(|v| v.as_table())
            .map(params_string)
            .unwrap_or_default();
        format!("{SCORER_POLICY}:{scorer}({inner})")
    } else {
        format!("{SCORER_POLICY}:{scorer}")
    }
}

/// Recursively merges `over` into `base` (tables merge, everything else is replaced).
pub fn deep_merge(base: &toml::Table, over: &toml::Table) -> toml::Table {
    let mut out = base.clone();
    for (k, v) in over {
        match (out.get_mut(k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => {
                *b = deep_merge(b, o);
            }
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    out
}

/// The continued-pretraining job of `policy` on model `model` (base weights `base`, cache id
/// `base_id`), with its table's `seed` set to `seed` when the manifest lists seeds.
fn continuation(
    m: &Manifest,
    model: &str,
    policy: &PolicySpec,
    seed: Option<u64>,
    base: &Weights,
    base_id: &str,
) -> Result<TrainJob> {
    let mut table = deep_merge(&m.train, &policy.train);
    let mut label = format!("{model}/{}", policy.name);
    if let Some(s) = seed {
        table.insert("seed".into(), toml::Value::Integer(s as i64));
        label = format!("{label}/seed{s}");
    }
    let source = match base {
        Weights::Path(p) => Source::Path(Path::new(p)),
        Weights::Job(_) => Source::Pending,
    };
    let cfg = build_config(m, &label, &table, Some(policy), source)?;
    let init = match base {
        Weights::Path(p) => Init::Path(p.clone()),
        Weights::Job(j) => Init::Job(*j),
    };
    Ok(TrainJob {
        id: job_id(base_id, &cfg),
        label,
        init,
        table,
        policy: Some(policy.clone()),
    })
}

/// Plans the training jobs and the evaluated checkpoints of a manifest, checking every
/// training table.
pub fn plan_checkpoints(m: &Manifest) -> Result<(Vec<TrainJob>, Vec<Checkpoint>)> {
    let mut jobs: Vec<TrainJob> = Vec::new();
    let mut checkpoints = Vec::new();
    for model in &m.model {
        let (base_weights, base_id) = match (&model.path, &model.pretrain) {
            (Some(p), None) => (Weights::Path(p.clone()), hash_of(&("path", p))?),
            (None, Some(table)) => {
                let label = format!("{}/pretrain", model.name);
                let cfg = build_config(m, &label, table, None, Source::Scratch)?;
                let id = job_id("scratch", &cfg);
                jobs.push(TrainJob {
                    id: id.clone(),
                    label,
                    init: Init::Scratch,
                    table: table.clone(),
                    policy: None,
                });
                (Weights::Job(jobs.len() - 1), id)
            }
            _ => {
                return Err(Error::invalid(format!(
                    "model `{}`: give exactly one of `path` and `pretrain`",
                    model.name
                )))
            }
        };
        if model.base {
            checkpoints.push(Checkpoint {
                id: hash_of(&("base", &base_id))?,
                model: model.name.clone(),
                policy: BASE_POLICY.into(),
                policy_params: toml::Table::new(),
                train_seed: None,
                weights: base_weights.clone(),
            });
        }
        let seeds: Vec<Option<u64>> = if m.seeds.is_empty() {
            vec![None]
        } else {
            m.seeds.iter().copied().map(Some).collect()
        };
        for policy in &m.policy {
            for seed in &seeds {
                let job = continuation(m, &model.name, policy, *seed, &base_weights, &base_id)?;
                checkpoints.push(Checkpoint {
                    id: job.id.clone(),
                    model: model.name.clone(),
                    policy: policy_label(m, policy),
                    policy_params: policy.params.clone(),
                    train_seed: *seed,
                    weights: Weights::Job(jobs.len()),
                });
                jobs.push(job);
            }
        }
    }
    Ok((jobs, checkpoints))
}
