//! `kvcat list`: every registered policy, compressor, scorer and task, with its one-line
//! description and default parameters. Plugins linked into the running binary show up too.

use kvcat_core::compressor::ScorerDescriptor;
use kvcat_core::registry::{all, params_string, Descriptor};
use kvcat_core::task::TaskDescriptor;
use kvcat_core::{CompressorDescriptor, PolicyDescriptor};

/// Arguments of `kvcat list`.
#[derive(clap::Args, Debug)]
pub struct ListArgs {
    /// Only this kind: policy, compressor, scorer or task.
    #[arg(long)]
    pub kind: Option<String>,
}

fn section<D: Descriptor>(title: &str) -> anyhow::Result<String>
where
    inventory::iter<D>: IntoIterator<Item = &'static D>,
{
    let map = all::<D>()?;
    let mut s = format!("{title} ({}):\n", map.len());
    for (name, d) in map {
        s.push_str(&format!("  {name:<22} {}\n", d.description()));
        let defaults = params_string(&d.defaults());
        if !defaults.is_empty() {
            s.push_str(&format!("  {:<22} defaults: {defaults}\n", ""));
        }
    }
    Ok(s)
}

/// The full listing, as printed.
pub fn listing(kind: Option<&str>) -> anyhow::Result<String> {
    const KINDS: [&str; 4] = ["policy", "compressor", "scorer", "task"];
    if let Some(k) = kind {
        anyhow::ensure!(
            KINDS.contains(&k),
            "--kind `{k}`: expected one of {}",
            KINDS.join(", ")
        );
    }
    let want = |k: &str| kind.is_none_or(|x| x == k);
    let mut parts = vec![];
    if want("policy") {
        parts.push(section::<PolicyDescriptor>("policies")?);
    }
    if want("compressor") {
        parts.push(section::<CompressorDescriptor>("compressors")?);
    }
    if want("scorer") {
        parts.push(section::<ScorerDescriptor>(
            "scorers (the `inner` of adakv / pyramid)",
        )?);
    }
    if want("task") {
        parts.push(section::<TaskDescriptor>("tasks")?);
    }
    Ok(parts.join("\n"))
}

pub fn run(args: ListArgs) -> anyhow::Result<()> {
    print!("{}", listing(args.kind.as_deref())?);
    Ok(())
}
