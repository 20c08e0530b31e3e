//! Argument parsing and dispatch for `kvcat`. Each subcommand's arguments and logic live in
//! their own module; this file only wires them together.

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use tracing_subscriber::fmt::format::FmtSpan;

/// kvcat: research on KV-cache compressibility (KV-CAT training, compressors, benchmarks).
#[derive(Parser, Debug)]
#[command(name = "kvcat", version, about)]
pub struct Cli {
    /// More logging (-v info, -vv debug); also honours RUST_LOG.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Write the logits of a token sequence to safetensors.
    Forward(crate::commands::inspect::ForwardArgs),
    /// Greedy generation from a prompt, with the KV cache.
    Generate(crate::commands::inspect::GenerateArgs),
    /// KV-CAT continued pretraining (or pretraining from scratch) from a TRAIN.toml.
    Train(crate::commands::train::TrainArgs),
    /// Compress a prefilled cache and write kept positions and continuation logits.
    Compress(crate::commands::compress::CompressArgs),
    /// List every registered policy, compressor and task with its parameters.
    List(crate::commands::list::ListArgs),
    /// Evaluate one model × task × compressor × budget and print a result table.
    Eval(crate::commands::eval::EvalArgs),
    /// Run a TOML manifest: policies × compressors × budgets × tasks.
    Bench(crate::commands::bench::BenchArgs),
    /// Join shard result directories into one.
    Merge(crate::commands::merge::MergeArgs),
    /// Write report.md and quality-vs-budget plots for a results directory.
    Report(crate::commands::report::ReportArgs),
    /// Compressibility profile of a checkpoint per layer and KV head (CSV, heatmap, curves).
    Analyze(crate::commands::analyze::AnalyzeArgs),
    /// Time prefill, decode, compression and training in-process (median of repeats).
    Perf(crate::commands::perf::PerfArgs),
}

/// Parses the process arguments, runs the command, prints errors without a backtrace.
/// Plugin crates call this from their own `main` after `use my_plugin as _;`.
pub fn main_entry() -> ExitCode {
    let allocator = crate::process_allocator::keep_freed_memory();
    let cli = Cli::parse();
    init_logging(cli.verbose);
    tracing::debug!(allocator = allocator.name(), "C allocator policy");
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            // Library errors often repeat their source in their own message; print each
            // cause only when it adds something.
            let mut shown = e.to_string();
            for cause in e.chain().skip(1) {
                let text = cause.to_string();
                if !shown.contains(&text) {
                    eprintln!("  caused by: {text}");
                }
                shown = text;
            }
            if let Some(hint) = disabled_feature_hint(&e) {
                eprintln!("  hint: {hint}");
            }
            ExitCode::FAILURE
        }
    }
}

/// A hint for an error caused by a cargo feature this binary was built without: the
/// `parquet` task is only registered with the `parquet` feature of kvcat-bench.
fn disabled_feature_hint(e: &anyhow::Error) -> Option<&'static str> {
    let unknown_parquet = e.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<kvcat_core::Error>(),
            Some(kvcat_core::Error::UnknownName { kind: "task", name, .. }) if name == "parquet"
        ) || cause.to_string().contains("unknown task `parquet`")
    });
    (unknown_parquet && !cfg!(feature = "parquet")).then_some(
        "this binary was built without the `parquet` feature of kvcat-bench; \
         rebuild with it (it is on by default) to read Parquet files",
    )
}

/// Runs one parsed command.
pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Forward(a) => crate::commands::inspect::forward(a),
        Command::Generate(a) => crate::commands::inspect::generate(a),
        Command::Train(a) => crate::commands::train::run(a),
        Command::Compress(a) => crate::commands::compress::run(a),
        Command::List(a) => crate::commands::list::run(a),
        Command::Eval(a) => crate::commands::eval::run(a),
        Command::Bench(a) => crate::commands::bench::run(a),
        Command::Merge(a) => crate::commands::merge::run(a),
        Command::Report(a) => crate::commands::report::run(a),
        Command::Analyze(a) => crate::commands::analyze::run(a),
        Command::Perf(a) => crate::commands::perf::run(a),
    }
}

/// Logs to stderr at `warn` (`-v` info, `-vv` debug; `RUST_LOG` overrides). With `-v`, the
/// spans (`load`, `prefill`, `compress`, `decode`, `train`, `train_step`, `cell`) also log
/// when they close, with their busy and idle time.
fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let span_events = match verbose {
        0 => FmtSpan::NONE,
        _ => FmtSpan::CLOSE,
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_span_events(span_events)
        .with_writer(std::io::stderr)
        .try_init();
}
