//! Inspection commands: `kvcat forward` (logits to safetensors) and `kvcat generate`.

use super::common::{IdsFile, ModelArgs};
use anyhow::Context;
use clap::Args;
use kvcat_core::decode_compressing::{greedy_compressing, DecodeCompression, History, Schedule};
use kvcat_core::{decode, probe, Budget, CompressionInput, KvCache};
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
    /// Compress the prompt's cache with this compressor, and again during generation when
    /// --compress-every or --max-slots is given (`kvcat list --kind compressor`).
    #[arg(long)]
    pub compressor: Option<String>,
    /// The budget to compress to: a fraction of the tokens seen (0.5, 50%) or a slot count.
    #[arg(long, default_value = "0.5")]
    pub budget: String,
    /// A compressor parameter, `key=value` (TOML value).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Compress back to the budget after every N generated tokens.
    #[arg(long, value_name = "N")]
    pub compress_every: Option<usize>,
    /// Compress back to the budget whenever the cache holds more than this many slots per head.
    #[arg(long, value_name = "SLOTS")]
    pub max_slots: Option<i64>,
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
    let out = match &args.compressor {
        Some(name) => generate_compressing(&args, name, &model, &prompt)?,
        None => {
            anyhow::ensure!(
                args.compress_every.is_none() && args.max_slots.is_none() && args.set.is_empty(),
                "--compress-every, --max-slots and --set need a --compressor"
            );
            let mut cache = KvCache::new();
            decode::greedy(
                &model,
                &mut cache,
                &prompt,
                args.max_new_tokens,
                &model.config.eos_token_ids,
            )?
        }
    };
    println!("{}", tok.decode(&out)?);
    Ok(())
}

/// Prefills all prompt tokens but the last, compresses that cache to the budget, then decodes
/// greedily, compressing per the schedule; reports the compressions on stderr.
fn generate_compressing(
    args: &GenerateArgs,
    name: &str,
    model: &kvcat_core::Model,
    prompt: &Tensor,
) -> anyhow::Result<Vec<i64>> {
    let t = prompt.size()[1];
    anyhow::ensure!(
        t >= 2,
        "--prompt: compression needs at least 2 prompt tokens, got {t}"
    );
    anyhow::ensure!(
        args.compress_every != Some(0),
        "--compress-every must be at least 1"
    );
    let budget: Budget = args.budget.parse().context("--budget")?;
    let params = super::eval::parse_assignments(&args.set).context("--set")?;
    let compressor = kvcat_core::compressor::build_compressor(name, &params)?;
    let context = prompt.narrow(1, 0, t - 1);
    let (full, hidden) = probe::prefill_for_compression(model, &context)?;
    let input = CompressionInput {
        model,
        cache: &full,
        context: &context,
        hidden: &hidden,
        question: None,
        budget,
        seed: 0,
    };
    let mut cache = tch::no_grad(|| compressor.compress(&input))?.cache;
    let comp = DecodeCompression {
        compressor: compressor.as_ref(),
        budget,
        schedule: Schedule {
            every: args.compress_every,
            max_slots: args.max_slots,
        },
        seed: 0,
    };
    let mut history = History::new(&context, &hidden);
    let last = prompt.narrow(1, t - 1, 1);
    let d = greedy_compressing(
        model,
        &mut cache,
        &mut history,
        &last,
        args.max_new_tokens,
        &model.config.eos_token_ids,
        &comp,
    )?;
    eprintln!(
        "{name} at budget {budget}: {} compressions during generation, {} KV bytes held at the end ({} tokens seen)",
        d.compressions, d.kv_bytes_end, cache.seq_len
    );
    Ok(d.ids)
}
