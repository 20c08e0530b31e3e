//! `kvcat report` (being written).

/// Arguments of `kvcat report`.
#[derive(clap::Args, Debug)]
pub struct ReportArgs {}

pub fn run(_args: ReportArgs) -> anyhow::Result<()> {
    anyhow::bail!("`kvcat report` is not built yet")
}
