//! `kvcat analyze`: the compressibility profile of a checkpoint (see [`crate::analyze`]).

use crate::analyze::profile::ProfileSpec;
use crate::analyze::{profile_model, write_profile};
use crate::commands::common::ModelArgs;
use crate::commands::eval::parse_assignments;
use crate::evaluate::{check_task_fits, prepare, EvalOptions, Prepared};
use anyhow::{bail, Context};
use kvcat_core::{Budget, Compressor, Model};
use std::path::PathBuf;

/// Arguments of `kvcat analyze`.
#[derive(clap::Args, Debug)]
pub struct AnalyzeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Task whose examples give the contexts and continuation queries (`kvcat list`).
    #[arg(long)]
    pub task: String,
    /// A task parameter, `key=value`, e.g. `context_len=256`.
    #[arg(long = "task-set", value_name = "KEY=VALUE")]
    pub task_set: Vec<String>,
    /// Number of examples.
    #[arg(long, default_value_t = 8)]
    pub n: usize,
    /// Budget fractions in (0, 1] for the curves, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "0.05,0.1,0.2,0.35,0.5,0.75"
    )]
    pub budgets: Vec<String>,
    /// Compressors whose kept sets are profiled beside the oracle (default parameters).
    #[arg(long, value_delimiter = ',')]
    pub compressors: Vec<String>,
    /// A second checkpoint profiled on the same examples; writes compare.csv and a heatmap of
    /// the difference (second − first).
    #[arg(long)]
    pub compare: Option<PathBuf>,
    /// Seed for example generation and stochastic compressors.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Do not prepend the model's BOS token to contexts.
    #[arg(long)]
    pub no_bos: bool,
    /// Output directory (profile.csv, heatmaps, curve plots).
    #[arg(long)]
    pub out: PathBuf,
}

/// Parses `--budgets` as fractions in (0, 1].
fn fractions(items: &[String]) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::new();
    for s in items {
        match s.parse::<Budget>().with_context(|| format!("--budgets `{s}`"))? {
            Budget::Fraction(b) => out.push(b),
            Budget::Slots(_) => bail!("--budgets `{s}`: analyze takes fractions in (0, 1] (e.g. 0.25 or 25%), not slot counts"),
        }
    }
    if out.is_empty() {
        bail!("--budgets: give at least one fraction in (0, 1]");
    }
    Ok(out)
}

fn compressors(names: &[String]) -> anyhow::Result<Vec<(String, Box<dyn Compressor>)>> {
    names
        .iter()
        .filter(|n| !n.is_empty())
        .map(|n| {
            let c = kvcat_core::compressor::build_compressor(n, &toml::Table::new())
                .with_context(|| format!("--compressors `{n}`"))?;
            Ok((n.clone(), c))
        })
        .collect()
}

fn examples_for(args: &AnalyzeArgs, model: &Model) -> anyhow::Result<Vec<Prepared>> {
    let params = parse_assignments(&args.task_set).context("--task-set")?;
    let task = kvcat_core::task::build_task(&args.task, &params)?;
    let tok = model
        .tokenizer
        .as_ref()
        .with_context(|| format!("{}: the model has no tokenizer", model.source))?;
    check_task_fits(task.as_ref(), model)?;
    let examples = task
        .examples(tok, args.n, args.seed)
        .with_context(|| format!("generating `{}` examples", args.task))?;
    let opts = EvalOptions {
        add_bos: !args.no_bos,
        seed: args.seed,
        ..Default::default()
    };
    Ok(prepare(model, tok, &examples, &opts)?)
}

pub fn run(args: AnalyzeArgs) -> anyhow::Result<()> {
    let budgets = fractions(&args.budgets)?;
    let comps = compressors(&args.compressors)?;
    let spec = ProfileSpec {
        budgets: &budgets,
        compressors: &comps,
        seed: args.seed,
    };
    let model = args.model.load()?;
    let (name, other_name) = names(&args.model.model, args.compare.as_deref());
    let rows = profile_model(&model, &name, &examples_for(&args, &model)?, &spec)
        .with_context(|| format!("profiling {}", model.source))?;
    let other = match &args.compare {
        Some(path) => {
            let margs = ModelArgs {
                model: path.clone(),
                ..args.model.clone()
            };
            let m2 = margs.load()?;
            let ex2 = examples_for(&args, &m2)?;
            Some(
                profile_model(&m2, &other_name, &ex2, &spec)
                    .with_context(|| format!("profiling {}", m2.source))?,
            )
        }
        None => None,
    };
    let written = write_profile(&args.out, &rows, other.as_deref())?;
    print_summary(&rows);
    if let Some(o) = &other {
        print_summary(o);
    }
    for p in written {
        println!("wrote {}", p.display());
    }
    Ok(())
}

/// The name a model goes by in rows and figures: its directory or file name.
fn short_name(path: &std::path::Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Short names for the two models, or their full paths when the short names coincide.
fn names(first: &std::path::Path, second: Option<&std::path::Path>) -> (String, String) {
    let (a, b) = (
        short_name(first),
        second.map(short_name).unwrap_or_default(),
    );
    if a == b {
        let full = |p: &std::path::Path| p.display().to_string();
        (full(first), second.map(full).unwrap_or_default())
    } else {
        (a, b)
    }
}

/// Prints the per-layer oracle mass AUC and entropy.
fn print_summary(rows: &[crate::analyze::table::ProfileRow]) {
    let Some(first) = rows.first() else { return };
    println!("{}", first.model);
    println!(
        "{:>5} {:>16} {:>13} {:>10} {:>10}",
        "layer", "oracle mass AUC", "entropy nats", "key erank", "val erank"
    );
    let layers = rows.iter().map(|r| r.layer + 1).max().unwrap_or(0);
    let get = |l: usize, metric: &str, method: &str| {
        rows.iter()
            .find(|r| {
                r.layer == l && r.kv_head == "all" && r.metric == metric && r.method == method
            })
            .map_or(f64::NAN, |r| r.value)
    };
    for l in 0..layers {
        println!(
            "{l:>5} {:>16.4} {:>13.3} {:>10.2} {:>10.2}",
            get(l, "mass_auc", "oracle"),
            get(l, "attn_entropy", ""),
            get(l, "key_erank", ""),
            get(l, "value_erank", "")
        );
    }
}
