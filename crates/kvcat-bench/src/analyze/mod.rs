//! `kvcat analyze`: a compressibility profile of a checkpoint, per layer and KV head.
//!
//! For each example, the context is prefilled and the continuation queries (the question and
//! answer prefix, or a perplexity continuation) are recomputed at their true positions. Over
//! the context slots, per layer and KV head, the profile measures ([`measures`]):
//!
//! - the **oracle eviction curve**: for each budget fraction `b`, the `floor(b·t)` slots with
//!   the most continuation-query attention mass (top-mass per head, exactly optimal for kept
//!   mass), the fraction of mass they keep and the relative error of the attention output with
//!   only them visible;
//! - the same two numbers for each chosen compressor's compressed cache (mass of the positions
//!   it still shows; output error through its own keys, values, keep mask and bias);
//! - the effective rank of keys and values (Roy & Vetterli 2007) and the attention entropy of
//!   the continuation queries;
//! - `mass_auc`, the area under each kept-mass curve closed by (0, 0) and (1, 1): 0.5 means
//!   attention is spread evenly (incompressible by eviction), 1 means it sits on few slots.
//!
//! Results are tidy CSV rows ([`table::ProfileRow`]) and figures ([`figures`]). Two
//! checkpoints profiled on the same examples give a difference table and heatmap.

#[cfg(feature = "figures")]
pub mod figures;
pub mod measures;
pub mod profile;
pub mod table;

use crate::evaluate::Prepared;
use kvcat_core::{Llama, Result};
use profile::{profile_example, ProfileSpec, Sample};
use std::path::Path;
use table::{aggregate, difference, write_csv, ProfileRow};

/// Profiles `model` over prepared examples (continuation: the perplexity continuation when
/// present, else the prompt fed after the context) and aggregates the rows under `name`.
pub fn profile_model(
    model: &Llama,
    name: &str,
    examples: &[Prepared],
    spec: &ProfileSpec,
) -> Result<Vec<ProfileRow>> {
    let mut samples: Vec<Sample> = Vec::new();
    for ex in examples {
        let cont = ex.continuation.as_ref().unwrap_or(&ex.prompt);
        samples.extend(profile_example(model, &ex.context, cont, spec)?);
    }
    Ok(aggregate(name, &samples))
}

/// The files [`write_profile`] writes, relative to the output directory.
pub const PROFILE_CSV: &str = "profile.csv";
pub const COMPARE_CSV: &str = "compare.csv";

/// Writes `profile.csv` into `out`; with `other`, also its rows in `profile.csv` and
/// `compare.csv` (`other − rows`). With the `figures` feature, also the figures of
/// [`figures::write_profile_figures`]; without it, says once on stderr that they were skipped.
/// Returns the paths written.
pub fn write_profile(
    out: &Path,
    rows: &[ProfileRow],
    other: Option<&[ProfileRow]>,
) -> Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(out)
        .map_err(|e| kvcat_core::Error::invalid(format!("creating {}: {e}", out.display())))?;
    let mut all = rows.to_vec();
    if let Some(o) = other {
        all.extend_from_slice(o);
    }
    let mut written = vec![out.join(PROFILE_CSV)];
    write_csv(&written[0], &all)?;
    let diff = other.map(|o| difference(rows, o));
    if let Some(diff) = &diff {
        written.push(out.join(COMPARE_CSV));
        write_csv(&out.join(COMPARE_CSV), diff)?;
    }
    #[cfg(feature = "figures")]
    {
        let compared = diff.as_deref().map(|d| (all.as_slice(), d));
        written.extend(figures::write_profile_figures(out, rows, compared)?);
    }
    #[cfg(not(feature = "figures"))]
    crate::report::note_figures_skipped();
    Ok(written)
}
