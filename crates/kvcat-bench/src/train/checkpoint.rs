//! On-disk training checkpoints: an HF-style directory that `kvcat_core::Model::load` reads like any other
//! (`config.json`, `model.safetensors`, `tokenizer.json`), plus the training state:
//!
//! | file | holds |
//! |---|---|
//! | `train_config.toml` | the resolved [`TrainConfig`] |
//! | `policy.toml` | the policy name and resolved parameters |
//! | `policy.safetensors` | learned policy parameters (their own `VarStore` group), if any |
//! | `optimizer.safetensors` | AdamW moments, f32 master weights, step |
//! | `trainer_state.json` | step, tokens seen, config hash, evaluations — written last |
//!
//! Every file is written to a temporary name and renamed. `trainer_state.json` goes last and
//! names the step; the optimizer file repeats it, so a torn checkpoint is detected on resume.

use super::config::TrainConfig;
use super::optim::AdamW;
use kvcat_core::error::ResultExt;
use kvcat_core::loading::write_atomic;
use kvcat_core::{Error, MaskingPolicy, Model, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::{nn, Tensor};

/// Held-out losses at one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    pub step: usize,
    /// Mean NTP over the held-out windows, unmasked (nats/token).
    pub full_nll: f64,
    /// Mean continuation NTP under the policy at `eval.budget` with the split at the middle of
    /// the configured range (nats/token).
    pub masked_nll: Option<f64>,
    pub tokens: i64,
}

/// The trainer's progress, saved as `trainer_state.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrainerState {
    /// Completed optimiser steps.
    pub step: usize,
    pub tokens_seen: i64,
    pub config_hash: String,
    /// Training seconds so far (wall clock, summed over resumed sessions).
    pub seconds: f64,
    pub evals: Vec<EvalRecord>,
}

/// File names inside a checkpoint directory.
pub const STATE: &str = "trainer_state.json";
pub const OPTIMIZER: &str = "optimizer.safetensors";
pub use kvcat_core::loading::POLICY_WEIGHTS;

/// Writes a complete checkpoint into `dir`.
pub fn save(
    dir: &Path,
    model: &Model,
    policy: &dyn MaskingPolicy,
    policy_vs: &nn::VarStore,
    opt: &AdamW,
    cfg: &TrainConfig,
    state: &TrainerState,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    model
        .save_hf(dir)
        .with_context(|| format!("saving the model to {}", dir.display()))?;
    write_atomic(&dir.join("train_config.toml"), cfg.to_toml()?.as_bytes())?;
    let mut pol = toml::Table::new();
    pol.insert("name".into(), toml::Value::String(policy.name().into()));
    pol.insert("params".into(), toml::Value::Table(policy.params()));
    write_atomic(
        &dir.join("policy.toml"),
        toml::to_string_pretty(&pol)
            .map_err(|e| Error::invalid(format!("serialising policy.toml: {e}")))?
            .as_bytes(),
    )?;
    let mut vars: Vec<(String, Tensor)> = policy_vs.variables().into_iter().collect();
    if !vars.is_empty() {
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let tmp = dir.join("policy.safetensors.tmp");
        Tensor::write_safetensors(&vars, &tmp)?;
        let dest = dir.join(POLICY_WEIGHTS);
        std::fs::rename(&tmp, &dest).map_err(|e| Error::io(dest, e))?;
    }
    opt.save(&dir.join(OPTIMIZER))?;
    write_atomic(
        &dir.join(STATE),
        serde_json::to_string_pretty(state)
            .map_err(|e| Error::invalid(format!("serialising {STATE}: {e}")))?
            .as_bytes(),
    )?;
    Ok(())
}

/// Reads `trainer_state.json` of `dir`, if there is one.
pub fn read_state(dir: &Path) -> Result<Option<TrainerState>> {
    let p = dir.join(STATE);
    if !p.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    let state = serde_json::from_str(&text).map_err(|e| Error::Format {
        file: p.display().to_string(),
        reason: format!("not a trainer state: {e}"),
    })?;
    Ok(Some(state))
}

/// Restores policy parameters and optimizer state from `dir` (the model is loaded by the caller
/// with `Model::load`), checking that the optimizer file matches the state's step.
pub fn restore(
    dir: &Path,
    policy_vs: &mut nn::VarStore,
    opt: &mut AdamW,
    state: &TrainerState,
) -> Result<()> {
    if !policy_vs.variables().is_empty() {
        let p = dir.join(POLICY_WEIGHTS);
        policy_vs
            .load(&p)
            .with_context(|| format!("loading policy parameters from {}", p.display()))?;
    }
    opt.load(&dir.join(OPTIMIZER))?;
    if opt.step as usize != state.step {
        return Err(Error::Format {
            file: dir.display().to_string(),
            reason: format!(
                "optimizer state is at step {} but trainer_state.json says {} (torn checkpoint)",
                opt.step, state.step
            ),
        });
    }
    Ok(())
}
