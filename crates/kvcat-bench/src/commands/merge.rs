//! `kvcat merge` (being written).

/// Arguments of `kvcat merge`.
#[derive(clap::Args, Debug)]
pub struct MergeArgs {}

pub fn run(_args: MergeArgs) -> anyhow::Result<()> {
    anyhow::bail!("`kvcat merge` is not built yet")
}
