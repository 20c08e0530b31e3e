//! `kvcat eval`: one model × task × compressor × budget(s); prints a result table and can
//! append CSV [`ResultRow`](crate::results::ResultRow)s.

use crate::commands::common::ModelArgs;
use crate::evaluate::{
    apply_chat_template, check_task_fits, evaluate_budgets, mean_context_len, prepare, EvalOptions,
    EvalResult,
};
use crate::results::{git_revision, ResultRow};
use crate::runner::store::append_rows_csv;
use anyhow::{bail, Context};
use kvcat_core::compressor::Compressor;
use kvcat_core::registry::params_string;
use kvcat_core::task::Task;
use kvcat_core::Model;
use kvcat_core::{Budget, Tokenizer};
use sha2::{Digest, Sha256};
use std::path::PathBuf;

/// Arguments of `kvcat eval`.
#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A tokenizer.json to use instead of the model's own.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Task name (`kvcat list` shows them).
    #[arg(long)]
    pub task: String,
    /// Compressor name, or `none` for the uncompressed cache.
    #[arg(long, default_value = "none")]
    pub compressor: String,
    /// Budget(s): a fraction (0.5, 50%) or a slot count (128); repeat or comma-separate to
    /// evaluate several budgets on one prefill per example.
    #[arg(long, value_delimiter = ',', default_value = "1.0")]
    pub budget: Vec<String>,
    /// Number of examples.
    #[arg(long, default_value_t = 10)]
    pub n: usize,
    /// Seed for example generation and stochastic compressors.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// A compressor parameter, `key=value` (value in TOML syntax; bare words are strings).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// A task parameter, `key=value`, e.g. `context_len=1024`, `depth=0.5`.
    #[arg(long = "task-set", value_name = "KEY=VALUE")]
    pub task_set: Vec<String>,
    /// Let the compressor see the question.
    #[arg(long)]
    pub query_aware: bool,
    /// Wrap examples in a chat format for instruction-tuned models: `chatml` (SmolLM2, Qwen).
    #[arg(long)]
    pub chat_template: Option<String>,
    /// Do not prepend the model's BOS token to contexts.
    #[arg(long)]
    pub no_bos: bool,
    /// Append result rows to this CSV (header written when the file is new).
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Print each example's prediction and score.
    #[arg(long)]
    pub show: bool,
    /// Also compress during generation: after every N generated tokens, compress the cache
    /// back to the budget (needs a --compressor).
    #[arg(long, value_name = "N")]
    pub compress_every: Option<usize>,
    /// Examples per prefill and per decode step (results do not depend on it).
    #[arg(long, default_value_t = crate::evaluate::DEFAULT_BATCH_SIZE)]
    pub batch_size: usize,
}

/// Parses `key=value` assignments into a TOML table. Values are TOML (`3`, `0.5`, `true`,
/// `"x"`, `[1, 2]`); anything that does not parse as TOML is taken as a string.
pub fn parse_assignments(items: &[String]) -> anyhow::Result<toml::Table> {
    let mut table = toml::Table::new();
    for item in items {
        let Some((k, v)) = item.split_once('=') else {
            bail!("`{item}`: expected key=value");
        };
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() {
            bail!("`{item}`: empty key");
        }
        let value = format!("v = {v}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(v.to_string()));
        table.insert(k.to_string(), value);
    }
    Ok(table)
}

/// A short content hash of a resolved cell configuration.
pub fn cell_hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `kvcat eval`: builds the task and compressor, loads the model, evaluates every budget
/// on one prefill per example, prints the table and appends the rows to `--csv`.
pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let budgets = parse_budgets(&args)?;
    let (task, compressor) = build_plugins(&args)?;
    let model = args.model.load()?;
    let tok = tokenizer_of(&args, &model)?;
    check_task_fits(task.as_ref(), &model)?;
    let opts = eval_options(&args, &model, &tok);
    let mut examples = task
        .examples(&tok, args.n, args.seed)
        .with_context(|| format!("generating `{}` examples", args.task))?;
    if let Some(t) = &args.chat_template {
        apply_chat_template(t, &mut examples)?;
    }
    let prepared = prepare(&model, &tok, &examples, &opts)?;
    let results = evaluate_budgets(
        &model,
        &tok,
        &prepared,
        compressor.as_deref(),
        &budgets,
        &opts,
    )?;

    let params = CellParams {
        task: params_string(&task.params()),
        compressor: compressor
            .as_ref()
            .map(|c| params_string(&c.params()))
            .unwrap_or_default(),
    };
    let rows = result_rows(&args, &model, &params, &results);
    print_heading(&args, &model, &params, mean_context_len(&prepared));
    if args.show {
        for r in &results {
            print_predictions(r);
        }
    }
    print_table(&results);
    if let Some(path) = &args.csv {
        append_rows_csv(path, &rows).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {} rows to {}", rows.len(), path.display());
    }
    Ok(())
}

/// The `--budget` values, checked against the flags that need a compressor.
fn parse_budgets(args: &EvalArgs) -> anyhow::Result<Vec<Budget>> {
    let budgets: Vec<Budget> = args
        .budget
        .iter()
        .map(|b| b.parse::<Budget>())
        .collect::<kvcat_core::Result<_>>()?;
    if args.compressor == "none" && budgets.len() > 1 {
        bail!("several --budget values need a --compressor (`none` keeps the whole cache)");
    }
    if args.compress_every.is_some() && args.compressor == "none" {
        bail!("--compress-every needs a --compressor (`none` keeps the whole cache)");
    }
    if args.compress_every == Some(0) {
        bail!("--compress-every must be at least 1");
    }
    Ok(budgets)
}

/// The task of an invocation and its compressor (`None` for `none`).
type Plugins = (Box<dyn Task>, Option<Box<dyn Compressor>>);

/// The task and the compressor (`None` for `none`) from the registries, with their
/// `--task-set` and `--set` parameters.
fn build_plugins(args: &EvalArgs) -> anyhow::Result<Plugins> {
    let task_params = parse_assignments(&args.task_set).context("--task-set")?;
    let comp_params = parse_assignments(&args.set).context("--set")?;
    let task = kvcat_core::task::build_task(&args.task, &task_params)?;
    let compressor = if args.compressor == "none" {
        if !comp_params.is_empty() {
            bail!("--set is given but --compressor is `none`");
        }
        None
    } else {
        Some(kvcat_core::compressor::build_compressor(
            &args.compressor,
            &comp_params,
        )?)
    };
    Ok((task, compressor))
}

/// `--tokenizer`, else the model's own tokenizer.
fn tokenizer_of(args: &EvalArgs, model: &Model) -> anyhow::Result<Tokenizer> {
    Ok(match &args.tokenizer {
        Some(p) => Tokenizer::from_file(p)?,
        None => model.tokenizer.clone().with_context(|| {
            format!(
                "{} has no tokenizer; pass --tokenizer tokenizer.json",
                model.source
            )
        })?,
    })
}

/// The evaluation options of the flags. A ChatML conversation already opens with
/// `<|im_start|>`, so BOS is not added when it is the model's BOS.
fn eval_options(args: &EvalArgs, model: &Model, tok: &Tokenizer) -> EvalOptions {
    let bos_is_turn_start = args.chat_template.as_deref() == Some("chatml")
        && tok.token_id("<|im_start|>").is_some()
        && tok.token_id("<|im_start|>") == model.config.bos_token_id;
    EvalOptions {
        query_aware: args.query_aware,
        add_bos: !args.no_bos && !bos_is_turn_start,
        seed: args.seed,
        compress_every: args.compress_every,
        batch_size: args.batch_size,
    }
}

/// The resolved task and compressor parameters, as `k=v,…` strings.
struct CellParams {
    task: String,
    compressor: String,
}

/// The CSV rows of every budget's result, with the cell columns of this invocation.
fn result_rows(
    args: &EvalArgs,
    model: &Model,
    params: &CellParams,
    results: &[EvalResult],
) -> Vec<ResultRow> {
    let run_id = format!(
        "eval-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    );
    let template = ResultRow {
        run_id,
        model: model.source.clone(),
        compressor: args.compressor.clone(),
        compressor_params: params.compressor.clone(),
        task: args.task.clone(),
        task_params: params.task.clone(),
        query_aware: args.query_aware,
        device: kvcat_core::device::device_name(model.device()),
        dtype: kvcat_core::device::dtype_name(model.kind()).to_string(),
        seed: args.seed,
        git_rev: git_revision(),
        ..Default::default()
    };
    let mut rows = Vec::new();
    for r in results {
        let cell = ResultRow {
            cell_id: eval_cell_id(args, model, params, r.budget),
            ..template.clone()
        };
        rows.extend(r.rows(&cell));
    }
    rows
}

/// The cell id of one budget: a hash of model, compressor and its parameters, budget
/// (`1` uncompressed), task and its parameters, n, seed and query-awareness.
fn eval_cell_id(
    args: &EvalArgs,
    model: &Model,
    params: &CellParams,
    budget: Option<Budget>,
) -> String {
    let budget_s = budget.map(|b| b.to_string()).unwrap_or_else(|| "1".into());
    let n_s = args.n.to_string();
    let seed_s = args.seed.to_string();
    let qa = args.query_aware.to_string();
    // Compressing during generation is a different cell; without it the id is unchanged.
    let every_s = args.compress_every.map(|n| format!("compress_every={n}"));
    let mut id_parts: Vec<&str> = vec![
        model.source.as_str(),
        &args.compressor,
        &params.compressor,
        &budget_s,
        &args.task,
        &params.task,
        &n_s,
        &seed_s,
        &qa,
    ];
    id_parts.extend(every_s.as_deref());
    cell_hash(&id_parts)
}

/// The line above the table: model, task, examples, context length, compressor.
fn print_heading(args: &EvalArgs, model: &Model, params: &CellParams, mean_context: f64) {
    println!(
        "model {}  task {} ({})  n {}  mean context {:.0} tokens  compressor {}{}{}",
        model.source,
        args.task,
        params.task,
        args.n,
        mean_context,
        args.compressor,
        if params.compressor.is_empty() {
            String::new()
        } else {
            format!(" ({})", params.compressor)
        },
        if args.query_aware {
            "  query-aware"
        } else {
            ""
        }
    );
}

fn print_predictions(r: &EvalResult) {
    let b = r
        .budget
        .map(|b| b.to_string())
        .unwrap_or_else(|| "none".into());
    for p in &r.predictions {
        let scores: Vec<String> = p
            .scores
            .iter()
            .map(|(k, v)| format!("{k}={v:.3}"))
            .collect();
        println!(
            "[budget {b}] {}: {:?}  gold {:?}  {}",
            p.id,
            p.text,
            p.answers,
            scores.join(" ")
        );
    }
}

fn print_table(results: &[EvalResult]) {
    println!(
        "{:<10} {:<20} {:>10} {:>9} {:>5} {:>9} {:>10} {:>10}",
        "budget", "metric", "value", "stderr", "n", "achieved", "kv MiB", "compress s"
    );
    for r in results {
        let b = r
            .budget
            .map(|b| b.to_string())
            .unwrap_or_else(|| "none".into());
        for m in r.metrics.iter().chain(&r.extra) {
            println!(
                "{:<10} {:<20} {:>10.4} {:>9.4} {:>5} {:>9.4} {:>10.3} {:>10.4}",
                b,
                m.name,
                m.mean,
                m.stderr,
                m.n,
                r.budget_achieved,
                r.kv_bytes / (1024.0 * 1024.0),
                r.compress_seconds
            );
        }
    }
}
