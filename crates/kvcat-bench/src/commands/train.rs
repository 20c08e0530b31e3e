//! `kvcat train --config TRAIN.toml --out DIR [--resume]`: KV-CAT continued pretraining, or
//! pretraining a tiny model from scratch. The output directory is an HF-style checkpoint that
//! `kvcat forward`/`generate`/`eval` load like any other.

use crate::train::{train, TrainConfig, TrainRunOptions};
use anyhow::Context;
use std::path::PathBuf;

/// Arguments of `kvcat train`.
#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// The training configuration (TOML; see experiments/train-*.toml).
    #[arg(long)]
    pub config: PathBuf,
    /// The checkpoint directory to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue from the checkpoint in --out (bit-for-bit on CPU).
    #[arg(long)]
    pub resume: bool,
    /// Override the number of optimiser steps of the config.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let mut cfg = TrainConfig::from_toml_file(&args.config)?;
    if let Some(s) = args.steps {
        cfg.steps = s;
    }
    let opts = TrainRunOptions {
        progress: !args.quiet,
        resume: args.resume,
        stop_after: None,
    };
    let s = train(&cfg, &args.out, &opts).with_context(|| {
        format!(
            "training {} into {}",
            args.config.display(),
            args.out.display()
        )
    })?;
    println!(
        "trained {} steps ({} tokens, {:.0} tokens/s this session) into {}",
        s.steps,
        s.tokens_seen,
        s.tokens_per_second,
        s.out_dir.display()
    );
    if let (Some(a), Some(b)) = (&s.init_eval, &s.final_eval) {
        println!(
            "held-out NTP: {:.4} at step {} -> {:.4} at step {} (nats/token){}",
            a.full_nll,
            a.step,
            b.full_nll,
            b.step,
            match (a.masked_nll, b.masked_nll) {
                (Some(x), Some(y)) => format!("; masked continuation {x:.4} -> {y:.4}"),
                _ => String::new(),
            }
        );
    }
    Ok(())
}
