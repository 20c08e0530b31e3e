//! `kvcat eval` (being written).

/// Arguments of `kvcat eval`.
#[derive(clap::Args, Debug)]
pub struct EvalArgs {}

pub fn run(_args: EvalArgs) -> anyhow::Result<()> {
    anyhow::bail!("`kvcat eval` is not built yet")
}
