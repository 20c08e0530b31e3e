//! `kvcat train` (being written).

/// Arguments of `kvcat train`.
#[derive(clap::Args, Debug)]
pub struct TrainArgs {}

pub fn run(_args: TrainArgs) -> anyhow::Result<()> {
    anyhow::bail!("`kvcat train` is not built yet")
}
