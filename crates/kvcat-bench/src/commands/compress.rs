//! `kvcat compress`: prefill a context, compress its cache with a registered compressor, and
//! write what was kept plus the continuation logits decoded after compression.
//!
//! Output safetensors (batch row 0):
//! - `layer.{i}.kept_positions`: `[kv_heads, kept]` int64, each row the original positions that
//!   head keeps, ascending. When heads keep different counts (e.g. `adakv`), `kept` is the
//!   largest count and shorter rows are padded with `-1` at the end;
//! - `continuation_logits`: `[C, vocab]` f32, when the ids file has a continuation: the logits
//!   of feeding the `C` continuation tokens after the compressed context, at positions
//!   `t .. t + C` continuing from the original context length `t` (row `j` predicts token
//!   `j + 1`).

use super::common::{IdsFile, ModelArgs};
use anyhow::Context;
use kvcat_core::compressor::build_compressor;
use kvcat_core::registry::params_string;
use kvcat_core::{probe, Budget, CompressionInput, KvCache, Llama};
use std::path::PathBuf;
use tch::{Kind, Tensor};

/// Arguments of `kvcat compress`.
#[derive(clap::Args, Debug)]
pub struct CompressArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// JSON ids file: {"context": [ids…], "continuation": [ids…], "question": [ids…]}
    /// (continuation optional; a question makes compression query-aware).
    #[arg(long)]
    pub ids_file: PathBuf,
    /// A registered compressor (see `kvcat list`).
    #[arg(long)]
    pub compressor: String,
    /// Kept fraction in (0, 1] (`0.5`, `50%`) or a slot count (`128`, `128slots`).
    #[arg(long)]
    pub budget: Budget,
    /// Override a compressor parameter: `key=value`, value in TOML (`window_size=32`,
    /// `inner=snapkv`, `stages=["knorm","tova"]`); dotted keys reach sub-tables
    /// (`inner_params.window_size=32`). Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Seed for stochastic compressors.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output safetensors file.
    #[arg(long)]
    pub out: PathBuf,
}

/// Parses `key=value` overrides into a parameter table. Values are TOML; a bare word that is
/// not valid TOML is taken as a string.
pub fn parse_overrides(sets: &[String]) -> anyhow::Result<toml::Table> {
    let mut table = toml::Table::new();
    for s in sets {
        let (key, raw) = s
            .split_once('=')
            .with_context(|| format!("--set `{s}`: expected KEY=VALUE"))?;
        let key = key.trim();
        anyhow::ensure!(!key.is_empty(), "--set `{s}`: empty key");
        let value = match format!("v = {}", raw.trim()).parse::<toml::Table>() {
            Ok(mut t) => t.remove("v").context("parsed value")?,
            Err(_) => toml::Value::String(raw.trim().to_string()),
        };
        let parts: Vec<&str> = key.split('.').collect();
        let (last, parents) = parts.split_last().context("empty key")?;
        let mut cur = &mut table;
        for p in parents {
            let entry = cur
                .entry(p.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            cur = entry
                .as_table_mut()
                .with_context(|| format!("--set `{s}`: `{p}` is not a table"))?;
        }
        cur.insert(last.to_string(), value);
    }
    Ok(table)
}

/// What one compression produced.
pub struct CompressOutput {
    /// Tensors to write (`layer.{i}.kept_positions`, `continuation_logits`).
    pub tensors: Vec<(String, Tensor)>,
    /// Visible slots over original slots.
    pub achieved: f64,
    /// The compressor's resolved parameters.
    pub params: toml::Table,
    /// The compressor's extra metrics.
    pub extra: Vec<(String, f64)>,
}

/// `[kv_heads, max kept]` int64 kept positions of batch row 0, padded with -1.
pub fn kept_positions_padded(layer: &kvcat_core::LayerCache) -> Tensor {
    let rows = layer.kept_positions(0);
    let width = rows.iter().map(|r| r.size()[0]).max().unwrap_or(0);
    let padded: Vec<Tensor> = rows
        .iter()
        .map(|r| {
            let r = r.to_kind(Kind::Int64).to_device(tch::Device::Cpu);
            let pad = width - r.size()[0];
            if pad == 0 {
                r
            } else {
                Tensor::cat(
                    &[r, Tensor::full([pad], -1, (Kind::Int64, tch::Device::Cpu))],
                    0,
                )
            }
        })
        .collect();
    Tensor::stack(&padded, 0)
}

/// Prefills `ids.context`, compresses with `name` at `budget`, and decodes the continuation.
pub fn compress_ids(
    model: &Llama,
    ids: &IdsFile,
    name: &str,
    params: &toml::Table,
    budget: Budget,
    seed: u64,
) -> anyhow::Result<CompressOutput> {
    let _g = tch::no_grad_guard();
    let compressor = build_compressor(name, params)?;
    let device = model.device();
    let context = Tensor::from_slice(&ids.context)
        .view([1, -1])
        .to_device(device);
    let (cache, hidden) = probe::prefill_for_compression(model, &context)?;
    let question = (!ids.question.is_empty()).then(|| {
        Tensor::from_slice(&ids.question)
            .view([1, -1])
            .to_device(device)
    });
    if question.is_some() {
        model.check_tokens(question.as_ref().expect("just checked"))?;
    }
    let input = CompressionInput {
        model,
        cache: &cache,
        context: &context,
        hidden: &hidden,
        question: question.as_ref(),
        budget,
        seed,
    };
    let compressed = compressor
        .compress(&input)
        .with_context(|| format!("compressor `{name}` at budget {budget}"))?;
    let mut out: KvCache = compressed.cache;
    anyhow::ensure!(
        out.layers.len() == cache.layers.len() && out.seq_len == cache.seq_len,
        "compressor `{name}` returned {} layers for seq_len {} (expected {} layers, seq_len {})",
        out.layers.len(),
        out.seq_len,
        cache.layers.len(),
        cache.seq_len
    );
    let mut tensors = vec![];
    for (i, layer) in out.layers.iter().enumerate() {
        tensors.push((
            format!("layer.{i}.kept_positions"),
            kept_positions_padded(layer),
        ));
    }
    let achieved = out.achieved_fraction();
    if !ids.continuation.is_empty() {
        let cont = Tensor::from_slice(&ids.continuation)
            .view([1, -1])
            .to_device(device);
        let logits = model.forward(&cont, &mut out)?;
        tensors.push((
            "continuation_logits".into(),
            logits
                .get(0)
                .to_kind(Kind::Float)
                .to_device(tch::Device::Cpu),
        ));
    }
    Ok(CompressOutput {
        tensors,
        achieved,
        params: compressor.params(),
        extra: compressed.extra,
    })
}

pub fn run(args: CompressArgs) -> anyhow::Result<()> {
    let ids = IdsFile::read(&args.ids_file)?;
    let params = parse_overrides(&args.set)?;
    let model = args.model.load()?;
    ids.check_vocab(model.config.vocab_size, &args.ids_file)?;
    if let Some(note) = args.budget.cap_note(&[ids.context.len() as i64]) {
        kvcat_core::loading::warn_once(&note);
    }
    let out = compress_ids(
        &model,
        &ids,
        &args.compressor,
        &params,
        args.budget,
        args.seed,
    )
    .with_context(|| format!("compressing {}", args.ids_file.display()))?;
    let named: Vec<(&str, Tensor)> = out
        .tensors
        .iter()
        .map(|(n, t)| (n.as_str(), t.shallow_clone()))
        .collect();
    super::common::write_safetensors(&args.out, &named)?;
    println!(
        "compressor {} ({}) budget {} achieved {:.4} over {} context tokens -> {}",
        args.compressor,
        params_string(&out.params),
        args.budget,
        out.achieved,
        ids.context.len(),
        args.out.display()
    );
    for (k, v) in &out.extra {
        println!("  {k} = {v}");
    }
    Ok(())
}
