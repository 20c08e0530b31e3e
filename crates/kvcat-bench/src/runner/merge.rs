//! `kvcat merge`: joins the results directories of shards (or of interrupted and resumed
//! runs) of one manifest into one directory, in grid order, refusing mismatched manifests.
//! Each cell's rows and per-example scores travel together.

use super::grid::Grid;
use super::manifest::Manifest;
use super::store::{recover, ResultStore, MANIFEST_FILE};
use crate::results::{ExampleScore, ResultRow};
use kvcat_core::{Error, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// What a merge did.
#[derive(Debug, Default)]
pub struct MergeSummary {
    pub inputs: usize,
    /// Cells in the merged directory, of `grid_cells`.
    pub cells: usize,
    pub grid_cells: usize,
    /// Cells newly written to the output.
    pub written: usize,
    /// Cells found in more than one input (the first input's rows are kept).
    pub duplicates: usize,
}

impl MergeSummary {
    pub fn missing(&self) -> usize {
        self.grid_cells - self.cells
    }
}

/// Merges the finished cells of `inputs` into `out` (created if needed, or resumed if it
/// already holds a merge of the same manifest). Every input must hold the same resolved
/// manifest.
pub fn merge(inputs: &[PathBuf], out: &Path) -> Result<MergeSummary> {
    if inputs.is_empty() {
        return Err(Error::invalid("merge: give at least one results directory"));
    }
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let mut text: Option<(PathBuf, String)> = None;
    for dir in inputs {
        if canon(dir) == canon(out) {
            return Err(Error::invalid(format!(
                "merge: the output {} is also an input; choose a new --out directory",
                out.display()
            )));
        }
        let mpath = dir.join(MANIFEST_FILE);
        let t = std::fs::read_to_string(&mpath).map_err(|e| Error::io(&mpath, e))?;
        match &text {
            None => text = Some((dir.clone(), t)),
            Some((first, t0)) if *t0 != t => {
                let diff = t0
                    .lines()
                    .zip(t.lines())
                    .enumerate()
                    .find(|(_, (a, b))| a != b)
                    .map(|(i, (a, b))| format!("line {}: `{a}` vs `{b}`", i + 1))
                    .unwrap_or_else(|| "they differ in length".into());
                return Err(Error::invalid(format!(
                    "merge: {} and {} were made by different manifests ({diff}); only shards of one manifest can be merged",
                    first.display(),
                    dir.display()
                )));
            }
            Some(_) => {}
        }
    }
    let (first, text) = text.expect("inputs is not empty");
    let manifest = Manifest::read_resolved(&first.join(MANIFEST_FILE))?;
    let grid = Grid::expand(&manifest)?;
    let mut found: HashMap<String, (Vec<ResultRow>, Vec<ExampleScore>)> = HashMap::new();
    let mut summary = MergeSummary {
        inputs: inputs.len(),
        grid_cells: grid.cells.len(),
        ..Default::default()
    };
    for dir in inputs {
        let rec = recover(dir)?;
        for ((id, rows), examples) in rec.cells.into_iter().zip(rec.cell_examples) {
            if grid.position(&id).is_none() {
                return Err(Error::Format {
                    file: dir.display().to_string(),
                    reason: format!("cell {id} is not in the manifest's grid"),
                });
            }
            match found.entry(id) {
                std::collections::hash_map::Entry::Occupied(_) => summary.duplicates += 1,
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert((rows, examples));
                }
            }
        }
    }
    let mut store = ResultStore::open_text(out, &text)?;
    for cell in &grid.cells {
        if let Some((rows, examples)) = found.get(&cell.id) {
            if !store.is_done(&cell.id) {
                store.append_cell(&cell.id, rows, examples)?;
                summary.written += 1;
            }
        }
    }
    summary.cells = store.done_count();
    Ok(summary)
}
