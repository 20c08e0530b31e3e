//! `kvcat bench` (being written).

/// Arguments of `kvcat bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {}

pub fn run(_args: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("`kvcat bench` is not built yet")
}
