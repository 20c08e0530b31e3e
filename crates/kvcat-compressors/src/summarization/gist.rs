//! `gist`: replaces the prefix by the summary slots a checkpoint learned with the `gist`
//! policy (gist tokens, Mu et al. 2023; Activation Beacon, Zhang et al. 2024).
//!
//! After the prefill, `g` summary slots per chunk are run from the checkpoint's learned
//! embeddings, each reading its chunk; the compressed cache holds them plus a window of the
//! most recent raw slots, `S + window = kept` per head ([`kvcat_core::summary`], the code the
//! policy trains with). A model not trained with the `gist` policy has no summary embeddings,
//! and compressing it is an error that says so.

use kvcat_core::compressor::{Compressed, CompressionInput, Compressor, CompressorDescriptor};
use kvcat_core::registry::{parse_params, to_table};
use kvcat_core::summary::{learned_summary, summarize, SummaryLayout};
use kvcat_core::Result;
use serde::{Deserialize, Serialize};

/// Parameters of `gist`: none; the chunk length and embeddings come from the checkpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GistParams {}

/// The `gist` compressor.
pub struct Gist;

impl Compressor for Gist {
    fn name(&self) -> &'static str {
        "gist"
    }
    fn params(&self) -> toml::Table {
        to_table(&GistParams::default())
    }
    fn compress(&self, input: &CompressionInput) -> Result<Compressed> {
        let Some(kept) = input.kept_slots("gist")? else {
            return Ok(Compressed::unchanged(input.cache));
        };
        let (embeddings, chunk_len) = learned_summary(input.model)?;
        let p = input.cache.seq_len;
        let layout = SummaryLayout::for_budget(p, kept, chunk_len, embeddings.size()[0])?;
        let _g = tch::no_grad_guard();
        let cache = summarize(input.model, input.cache, &embeddings, &layout)?;
        Ok(Compressed {
            cache,
            extra: vec![
                ("summary_slots".into(), layout.summary_slots() as f64),
                ("window_slots".into(), layout.window as f64),
            ],
        })
    }
}

fn build(table: &toml::Table) -> Result<Box<dyn Compressor>> {
    let _: GistParams = parse_params("compressor", "gist", table)?;
    Ok(Box::new(Gist))
}

inventory::submit! {
    CompressorDescriptor {
        name: "gist",
        description: "replace the prefix by the summary slots learned with the `gist` policy (gist tokens / Activation Beacon) plus a recent window",
        defaults: || to_table(&GistParams::default()),
        build,
    }
}
