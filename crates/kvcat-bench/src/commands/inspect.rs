//! Inspection commands: `kvcat forward` (logits to safetensors) and `kvcat generate`.

use super::common::{IdsFile, ModelArgs};
use anyhow::Context;
use clap::Args;
use kvcat_core::{decode, KvCache};
use std::path::PathBuf;
use tch::{Kind, Tensor};

#[derive(Args, Debug)]
pub struct ForwardArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// JSON ids file: {"context": [ids…], "continuation": [ids…]}.
    #[arg(long)]
    pub ids_file: PathBuf,
    /// Output safetensors; holds `logits` [T, vocab] f32 for context ++ continuation.
    #[arg(long)]
    pub out: PathBuf,
}

/// Writes the logits of `context ++ continuation` as tensor `logits` `[T, vocab]` (f32).
pub fn forward(args: ForwardArgs) -> anyhow::Result<()> {
    let ids = IdsFile::read(&args.ids_file)?;
    let model = args.model.load()?;
    ids.check_vocab(model.config.vocab_size, &args.ids_file)?;
    let all: Vec<i64> = ids
        .context
        .iter()
        .chain(&ids.continuation)
        .copied()
        .collect();
    let tokens = Tensor::from_slice(&all)
        .view([1, -1])
        .to_device(model.device());
    let logits = tch::no_grad(|| model.forward(&tokens, &mut KvCache::new()))
        .with_context(|| format!("running {}", args.ids_file.display()))?;
    let logits = logits
        .get(0)
        .to_kind(Kind::Float)
        .to_device(tch::Device::Cpu);
    super::common::write_safetensors(&args.out, &[("logits", logits)])?;
    Ok(())
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt text (tokenized with the model's own tokenizer).
    #[arg(long)]
    pub prompt: String,
    #[arg(long, default_value_t = 32)]
    pub max_new_tokens: usize,
}

/// Greedy decoding with the KV cache; prints the prompt's continuation.
pub fn generate(args: GenerateArgs) -> anyhow::Result<()> {
    let model = args.model.load()?;
    let tok = model
        .tokenizer
        .as_ref()
        .with_context(|| format!("{}: the model has no tokenizer", args.model.model.display()))?;
    let mut ids = tok.encode(&args.prompt)?;
    if let Some(bos) = model.config.bos_token_id {
        if ids.first() != Some(&bos) {
            ids.insert(0, bos);
        }
    }
    let prompt = Tensor::from_slice(&ids)
        .view([1, -1])
        .to_device(model.device());
    let mut cache = KvCache::new();
    let out = decode::greedy(
        &model,
        &mut cache,
        &prompt,
        args.max_new_tokens,
        &model.config.eos_token_ids,
    )?;
    println!("{}", tok.decode(&out)?);
    Ok(())
}
