//! Checkpoint planning: which training jobs a manifest needs and which checkpoints it
//! evaluates.
//!
//! Every `[[model]]` gives a *base* weight source: a file (`path`) or a from-scratch
//! pretraining job (`pretrain`). Every `[[policy]]` then gives one continued-pretraining job
//! per model, initialised from that base, with the shared `[train]` table deep-merged with the
//! policy's own `train` overrides. A job's id is a content hash of its resolved training
//! table, its policy and its parent's id, so trained checkpoints are cached across runs.

use super::grid::hash_of;
use super::manifest::{Manifest, PolicySpec, BASE_POLICY, SCORER_POLICY};
use super::training::{build_config, job_id, Source};
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

/// Plans the training jobs and the evaluated checkpoints of a manifest, checking every
/// training table.
pub fn plan_checkpoints(m: &Manifest) -> Result<(Vec<TrainJob>, Vec<Checkpoint>)> {
    let mut jobs: Vec<TrainJob> = Vec::new();
    let mut checkpoints = Vec::new();
    for model in &m.model {
        let (base_weights, base_id) = match (&model.path, &model.pretrain) {
            (Some(p), None) => (Weights::Path(p.clone()), hash_of(&("path", p))),
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
                id: hash_of(&("base", &base_id)),
                model: model.name.clone(),
                policy: BASE_POLICY.into(),
                policy_params: toml::Table::new(),
                weights: base_weights.clone(),
            });
        }
        for policy in &m.policy {
            let table = deep_merge(&m.train, &policy.train);
            let label = format!("{}/{}", model.name, policy.name);
            let source = match &base_weights {
                Weights::Path(p) => Source::Path(Path::new(p)),
                Weights::Job(_) => Source::Pending,
            };
            let cfg = build_config(m, &label, &table, Some(policy), source)?;
            let id = job_id(&base_id, &cfg);
            let init = match &base_weights {
                Weights::Path(p) => Init::Path(p.clone()),
                Weights::Job(j) => Init::Job(*j),
            };
            let job = TrainJob {
                id: id.clone(),
                label,
                init,
                table,
                policy: Some(policy.clone()),
            };
            jobs.push(job);
            checkpoints.push(Checkpoint {
                id,
                model: model.name.clone(),
                policy: policy_label(m, policy),
                policy_params: policy.params.clone(),
                weights: Weights::Job(jobs.len() - 1),
            });
        }
    }
    Ok((jobs, checkpoints))
}
