//! `kvcat compress` (being written).

/// Arguments of `kvcat compress`.
#[derive(clap::Args, Debug)]
pub struct CompressArgs {}

pub fn run(_args: CompressArgs) -> anyhow::Result<()> {
    anyhow::bail!("`kvcat compress` is not built yet")
}
