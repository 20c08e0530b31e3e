//! `kvcat merge DIR… --out DIR`: join shard results directories of one manifest.

use anyhow::Context;
use std::path::PathBuf;

/// Arguments of `kvcat merge`.
#[derive(clap::Args, Debug)]
pub struct MergeArgs {
    /// Results directories of shards of one manifest.
    #[arg(required = true)]
    pub dirs: Vec<PathBuf>,
    /// The merged results directory (created, or continued if it holds an earlier merge).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: MergeArgs) -> anyhow::Result<()> {
    let s = crate::runner::merge::merge(&args.dirs, &args.out)
        .with_context(|| format!("merging into {}", args.out.display()))?;
    eprintln!(
        "merged {} directories into {}: {} of {} cells ({} new, {} found twice, {} missing)",
        s.inputs,
        args.out.display(),
        s.cells,
        s.grid_cells,
        s.written,
        s.duplicates,
        s.missing()
    );
    if s.missing() > 0 {
        eprintln!("some cells are missing: run the remaining shards (or re-run failed ones) and merge again");
    }
    Ok(())
}
