//! `kvcat perf`: in-process throughput of one model on one device — prefill tok/s per context
//! length, decode tok/s, seconds per compression per compressor, and training tok/s per
//! masking policy (see [`crate::perf`]). Prints a table; `--json OUT` writes the numbers.

use crate::perf::{all_compressors, all_policies, measure, PerfPlan, PerfReport};
use anyhow::Context;
use kvcat_core::device::{default_dtype, parse_dtype, DeviceChoice};
use kvcat_core::{Budget, LlamaConfig, Model};
use std::path::PathBuf;

/// Which parts `kvcat perf` measures.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Prefill,
    Decode,
    Compress,
    Train,
}

/// A randomly initialised model of a known shape, for `--scratch`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScratchShape {
    /// 2 layers, d 64, GQA 4/2, vocab 256 (for tests).
    Tiny,
    /// SmolLM2-135M's shape (30 layers, d 576, GQA 9/3, vocab 49152).
    #[value(name = "smollm2-135m")]
    Smollm2,
}

#[derive(clap::Args, Debug)]
pub struct PerfArgs {
    /// An HF checkpoint directory or a .gguf file (or use --scratch).
    #[arg(long, required_unless_present = "scratch", conflicts_with = "scratch")]
    pub model: Option<PathBuf>,
    /// A random-init model of a known shape instead of --model.
    #[arg(long, value_enum)]
    pub scratch: Option<ScratchShape>,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// auto (f32 on CPU, bf16 on CUDA), f32, bf16 or f16.
    #[arg(long, default_value = "auto")]
    pub dtype: String,
    /// Prefill context lengths.
    #[arg(long, value_delimiter = ',', default_value = "1024,4096")]
    pub lens: Vec<i64>,
    /// What to measure.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "prefill,decode,compress,train"
    )]
    pub sections: Vec<Section>,
    /// Untimed warm-up runs per measurement.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Timed runs per measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Decode: prefill length before decoding (default: the first --lens), tokens decoded.
    #[arg(long)]
    pub decode_context: Option<i64>,
    #[arg(long, default_value_t = 32)]
    pub decode_tokens: i64,
    /// Compression: compressors (default: every registered one), context length (default:
    /// the last --lens) and budget.
    #[arg(long, value_delimiter = ',')]
    pub compressors: Vec<String>,
    #[arg(long)]
    pub compress_len: Option<i64>,
    #[arg(long, default_value = "0.25")]
    pub budget: Budget,
    /// Training: policies (default: `plain` next-token training, then every registered
    /// policy under the default KV-CAT loss) and the micro-batch.
    #[arg(long, value_delimiter = ',')]
    pub policies: Vec<String>,
    #[arg(long, default_value_t = 8)]
    pub train_batch: i64,
    #[arg(long, default_value_t = 1024)]
    pub train_len: i64,
    /// Intra-op CPU threads (default: libtorch's choice).
    #[arg(long)]
    pub threads: Option<i32>,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

fn scratch_config(shape: ScratchShape) -> LlamaConfig {
    let (vocab, hidden, inter, layers, heads, kv, hd, theta) = match shape {
        ScratchShape::Tiny => (256, 64, 128, 2, 4, 2, 16, 10_000.0),
        ScratchShape::Smollm2 => (49_152, 576, 1536, 30, 9, 3, 64, 100_000.0),
    };
    LlamaConfig {
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: inter,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: kv,
        head_dim: hd,
        rms_norm_eps: 1e-5,
        rope_theta: theta,
        max_position_embeddings: 8192,
        tie_word_embeddings: true,
        bos_token_id: None,
        eos_token_ids: vec![],
    }
}

fn load(a: &PerfArgs) -> anyhow::Result<Model> {
    let device = a.device.parse::<DeviceChoice>()?.resolve()?;
    let kind = parse_dtype(&a.dtype)?.unwrap_or(default_dtype(device));
    match (&a.model, a.scratch) {
        (Some(path), _) => Model::load(path, device, kind)
            .with_context(|| format!("loading model {}", path.display())),
        (None, Some(shape)) => {
            tch::manual_seed(0);
            Ok(Model::from_config(&scratch_config(shape), device, kind)?)
        }
        (None, None) => anyhow::bail!("pass --model PATH or --scratch SHAPE"),
    }
}

fn plan(a: &PerfArgs) -> anyhow::Result<PerfPlan> {
    anyhow::ensure!(
        !a.lens.is_empty() && a.lens.iter().all(|&l| l >= 2),
        "--lens: every length must be ≥ 2, got {:?}",
        a.lens
    );
    anyhow::ensure!(
        a.train_batch >= 1 && a.train_len >= 4,
        "--train-batch must be ≥ 1 and --train-len ≥ 4"
    );
    let has = |s: Section| a.sections.contains(&s);
    let pick = |given: &[String], all: fn() -> kvcat_core::Result<Vec<String>>, on: bool| match (
        on,
        given.is_empty(),
    ) {
        (false, _) => Ok(vec![]),
        (true, true) => all(),
        (true, false) => Ok(given.to_vec()),
    };
    Ok(PerfPlan {
        lens: if has(Section::Prefill) {
            a.lens.clone()
        } else {
            vec![]
        },
        warmup: a.warmup,
        repeats: a.repeats.max(1),
        decode_context: a.decode_context.unwrap_or(a.lens[0]),
        decode_tokens: if has(Section::Decode) {
            a.decode_tokens
        } else {
            0
        },
        compress_len: a.compress_len.unwrap_or(a.lens[a.lens.len() - 1]),
        budget: a.budget,
        compressors: pick(&a.compressors, all_compressors, has(Section::Compress))?,
        train_batch: a.train_batch,
        train_len: a.train_len,
        policies: pick(&a.policies, all_policies, has(Section::Train))?,
    })
}

/// A plain-text table of the report.
pub fn render(r: &PerfReport) -> String {
    let mut s = format!(
        "model {} on {} ({}, {} threads, {} allocator), median of {} after {} warm-up\n",
        r.model, r.device, r.dtype, r.threads, r.allocator, r.repeats, r.warmup
    );
    for (len, v) in &r.prefill_tok_s {
        s += &format!("prefill   {len:>8} tokens        {v:>12.1} tok/s\n");
    }
    if let Some(v) = r.decode_tok_s {
        s += &format!(
            "decode    after {:>6} tokens  {v:>12.2} tok/s\n",
            r.decode_context
        );
    }
    for (name, v) in &r.compress_s {
        s += &format!(
            "compress  {name:<22} {v:>10.4} s  ({} tokens, budget {})\n",
            r.compress_len, r.budget
        );
    }
    for (name, e) in &r.compress_failed {
        s += &format!("compress  {name:<22} failed: {e}\n");
    }
    for (name, v) in &r.train_tok_s {
        s += &format!(
            "train     {name:<22} {v:>10.1} tok/s ({} × {})\n",
            r.train_batch, r.train_len
        );
    }
    s
}

pub fn run(a: PerfArgs) -> anyhow::Result<()> {
    if let Some(n) = a.threads {
        anyhow::ensure!(n >= 1, "--threads must be ≥ 1, got {n}");
        tch::set_num_threads(n);
    }
    let plan = plan(&a)?;
    let model = load(&a)?;
    let report = measure(&model, &plan)?;
    print!("{}", render(&report));
    if let Some(path) = &a.json {
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
