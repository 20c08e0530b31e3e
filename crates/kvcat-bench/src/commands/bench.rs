//! `kvcat bench MANIFEST.toml`: run a manifest's grid (or a shard of it) into a durable,
//! resumable results directory.

use crate::runner::estimate::estimate;
use crate::runner::kvcat_executor::KvcatExecutor;
use crate::runner::manifest::Manifest;
use crate::runner::store::{recover, RESULTS_FILE};
use crate::runner::{shard_cells, BenchOptions, BenchSummary, Grid, Shard};
use anyhow::Context;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Arguments of `kvcat bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// The manifest (TOML): models, policies, compressors, budgets, tasks.
    pub manifest: PathBuf,
    /// Results directory [default: runs/<manifest name>].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Checkpoint cache, shared by runs and shards [default: <out>/checkpoints].
    #[arg(long)]
    pub checkpoints: Option<PathBuf>,
    /// Run only slice I of N (0-based), e.g. `0/4`. Defaults to the Slurm array task
    /// (SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT) when set.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<Shard>,
    /// Print the resolved grid with cell counts and a time estimate; run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Train (or find cached) the checkpoints this shard needs, then stop.
    #[arg(long)]
    pub train_only: bool,
    /// With --dry-run: skip the measured time estimate.
    #[arg(long)]
    pub no_estimate: bool,
    /// Stop after running N cells (finished cells are kept; a re-run continues).
    #[arg(long, value_name = "N")]
    pub max_cells: Option<usize>,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let manifest = Manifest::load(&args.manifest)
        .with_context(|| format!("invalid manifest {}", args.manifest.display()))?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| Path::new("runs").join(&manifest.name));
    let shard = match args.shard {
        Some(s) => Some(s),
        None => Shard::from_env().context("reading the Slurm array task")?,
    };
    let mut opts = BenchOptions::new(&out);
    if let Some(c) = &args.checkpoints {
        opts.checkpoints = c.clone();
    }
    opts.shard = shard;
    opts.max_cells = args.max_cells;
    opts.train_only = args.train_only;
    if args.dry_run {
        return dry_run(&manifest, &opts, !args.no_estimate);
    }
    let mut exec = KvcatExecutor::new(&manifest)?;
    let summary = crate::runner::run_bench(&manifest, &opts, &mut exec)
        .with_context(|| format!("running {}", args.manifest.display()))?;
    print_summary(&manifest, &opts, &summary);
    if !summary.failed.is_empty() {
        anyhow::bail!(
            "{} of {} cells failed (listed above and in {}); re-run the same command to retry them",
            summary.failed.len(),
            summary.shard_cells,
            out.join(crate::runner::failures::FAILED_FILE).display()
        );
    }
    Ok(())
}

fn fmt_secs(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn grid_formula(m: &Manifest, grid: &Grid) -> String {
    let formula = format!(
        "{} checkpoints × {} tasks × (1 reference + {} compressors × {} budgets)",
        grid.checkpoints.len(),
        m.task.len(),
        m.compressor.len(),
        m.compressed_budgets().len()
    );
    let restricted: Vec<&str> = m
        .compressor
        .iter()
        .filter(|c| !c.policies.is_empty())
        .map(|c| c.name.as_str())
        .collect();
    if restricted.is_empty() {
        format!("{} cells = {formula}", grid.cells.len())
    } else {
        format!(
            "{} cells: {formula}, less the checkpoints that {} skips (its `policies`)",
            grid.cells.len(),
            restricted.join(", ")
        )
    }
}

/// `--dry-run`: prints what the manifest expands to and what is left to run in `opts.out`,
/// then (`with_estimate`) a measured time estimate.
fn dry_run(m: &Manifest, opts: &BenchOptions, with_estimate: bool) -> anyhow::Result<()> {
    let grid = Grid::expand(m)?;
    let cells = shard_cells(&grid, opts.shard);
    let done = finished_cells(&opts.out)?;
    let todo: Vec<_> = cells.iter().filter(|c| !done.contains(&c.id)).collect();
    println!("manifest {} (run {})", m.name, m.run_id()?);
    println!("  device {}, dtype {}, seed {}", m.device, m.dtype, m.seed);
    println!(
        "  budgets: {}",
        m.budgets
            .iter()
            .map(|b| b.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    print_grid(m, &grid, &opts.checkpoints);
    println!("grid: {}", grid_formula(m, &grid));
    if let Some(s) = opts.shard {
        println!("shard {s}: {} cells", cells.len());
    }
    println!(
        "to run: {} cells ({} already finished in {})",
        todo.len(),
        cells.len() - todo.len(),
        opts.out.display()
    );
    if !with_estimate {
        return Ok(());
    }
    eprintln!("measuring a training step and one example per compressor for the estimate (--no-estimate skips this)…");
    let est = estimate(m, &grid, &todo, &opts.checkpoints);
    println!(
        "estimate: training {}, evaluation {}, total {} ({})",
        fmt_secs(est.train_seconds),
        fmt_secs(est.eval_seconds),
        fmt_secs(est.train_seconds + est.eval_seconds),
        est.basis
    );
    Ok(())
}

/// The ids of the cells already finished in the results directory `out` (none when it has
/// no results yet).
fn finished_cells(out: &Path) -> anyhow::Result<BTreeSet<String>> {
    if !out.join(RESULTS_FILE).exists() {
        return Ok(BTreeSet::new());
    }
    Ok(recover(out)?.cells.into_iter().map(|(id, _)| id).collect())
}

/// The grid's parts: training jobs (cached in `checkpoints` or to train), checkpoints,
/// compressors and tasks, each with its parameters.
fn print_grid(m: &Manifest, grid: &Grid, checkpoints: &Path) {
    use kvcat_core::registry::params_string;
    println!("training jobs ({}):", grid.train_jobs.len());
    for job in &grid.train_jobs {
        let cached = checkpoints.join(&job.id).is_dir();
        println!(
            "  {:<28} {}  {}",
            job.label,
            job.id,
            if cached { "cached" } else { "to train" }
        );
    }
    println!("checkpoints ({}):", grid.checkpoints.len());
    for c in &grid.checkpoints {
        println!(
            "  {}/{} {}",
            c.model,
            c.policy,
            params_string(&c.policy_params)
        );
    }
    println!("compressors ({}):", m.compressor.len());
    for c in &m.compressor {
        println!("  {} {}", c.name, params_string(&c.params));
    }
    println!("tasks ({}):", m.task.len());
    for t in &m.task {
        println!(
            "  {} n={} seed={} {}",
            t.name,
            t.n,
            t.seed,
            params_string(&t.params)
        );
    }
}

fn print_summary(m: &Manifest, opts: &BenchOptions, s: &BenchSummary) {
    let grid = Grid::expand(m).ok();
    eprintln!();
    eprintln!(
        "kvcat bench {} (run {}){}",
        m.name,
        s.run_id,
        opts.shard
            .map(|x| format!(", shard {x}"))
            .unwrap_or_default()
    );
    if let Some(g) = &grid {
        eprintln!("  grid      {}", grid_formula(m, g));
    }
    if opts.train_only {
        eprintln!("  training only: no cells evaluated");
    } else {
        eprintln!(
            "  cells     {} run now ({} rows), {} already finished, {} failed, {} remaining of {}",
            s.ran,
            s.rows,
            s.skipped,
            s.failed.len(),
            s.remaining(),
            s.shard_cells
        );
    }
    eprintln!(
        "  training  {} checkpoints trained, {} reused from {}",
        s.trained,
        s.reused,
        opts.checkpoints.display()
    );
    eprintln!("  results   {}", opts.out.join(RESULTS_FILE).display());
    if s.analyzed > 0 {
        eprintln!(
            "  analyze   {} profile directories written under {}",
            s.analyzed,
            opts.out.join("analyze").display()
        );
    }
    eprintln!("  wall      {}", fmt_secs(s.seconds));
    if s.stopped_early {
        eprintln!("  stopped after --max-cells; run the same command again to continue");
    }
    if !opts.train_only && s.remaining() == 0 && s.failed.is_empty() {
        if opts.shard.is_some() {
            eprintln!("next: kvcat merge <shard dirs…> --out <dir>, then kvcat report <dir>");
        } else {
            eprintln!("next: kvcat report {}", opts.out.display());
        }
    }
}
