//! `kvcat list` (being written).

/// Arguments of `kvcat list`.
#[derive(clap::Args, Debug)]
pub struct ListArgs {}

pub fn run(_args: ListArgs) -> anyhow::Result<()> {
    anyhow::bail!("`kvcat list` is not built yet")
}
