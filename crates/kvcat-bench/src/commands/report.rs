//! `kvcat report DIR`: report.md and quality-vs-budget plots for a results directory.

use anyhow::Context;
use std::path::PathBuf;

/// Arguments of `kvcat report`.
#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// A results directory written by `kvcat bench` or `kvcat merge`.
    pub dir: PathBuf,
}

pub fn run(args: ReportArgs) -> anyhow::Result<()> {
    let s = crate::report::write_report(&args.dir)
        .with_context(|| format!("writing the report of {}", args.dir.display()))?;
    eprintln!(
        "report of {} of {} cells ({} curves): {}",
        s.cells,
        s.grid_cells,
        s.curves,
        s.report.display()
    );
    if s.paired_aucs > 0 {
        eprintln!(
            "paired AUC gains over none: {} of {} significant (95% bootstrap interval excludes 0)",
            s.significant_aucs, s.paired_aucs
        );
    } else {
        eprintln!("no paired statistics (no per-example scores in examples.csv)");
    }
    for f in &s.figures {
        eprintln!("  figure {}", f.display());
    }
    Ok(())
}
