//! Deterministic, balanced shards of a grid: `--shard i/n` (0-based `i`), or Slurm's
//! `SLURM_ARRAY_TASK_ID` / `SLURM_ARRAY_TASK_COUNT`.
//!
//! Shard `i` of `n` takes the contiguous cell range `[⌊N·i/n⌋, ⌊N·(i+1)/n⌋)` of the grid's
//! `N` cells: slices are disjoint, cover the grid, differ in size by at most one, and (since
//! cells are ordered checkpoint-major) each shard touches few checkpoints.

use kvcat_core::{Error, Result};
use std::fmt;
use std::ops::Range;
use std::str::FromStr;

/// One slice of a grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// 0-based shard index, `< count`.
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// A checked shard.
    pub fn new(index: usize, count: usize) -> Result<Shard> {
        if count == 0 || index >= count {
            return Err(Error::invalid(format!(
                "shard {index}/{count}: need 0 ≤ index < count (shards are 0-based, e.g. 0/4 … 3/4)"
            )));
        }
        Ok(Shard { index, count })
    }

    /// The cell indices of this shard in a grid of `total` cells.
    pub fn range(&self, total: usize) -> Range<usize> {
        let start = total * self.index / self.count;
        let end = total * (self.index + 1) / self.count;
        start..end
    }

    /// The shard Slurm chose, from `SLURM_ARRAY_TASK_ID` and `SLURM_ARRAY_TASK_COUNT`
    /// (offset by `SLURM_ARRAY_TASK_MIN` when set), or `None` outside a Slurm array.
    pub fn from_env() -> Result<Option<Shard>> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// [`Shard::from_env`] over any variable lookup (for tests).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Option<Shard>> {
        let (Some(id), Some(count)) = (get("SLURM_ARRAY_TASK_ID"), get("SLURM_ARRAY_TASK_COUNT"))
        else {
            return Ok(None);
        };
        let num = |name: &str, v: &str| {
            v.trim().parse::<usize>().map_err(|_| {
                Error::invalid(format!(
                    "environment variable {name}=`{v}` is not a non-negative integer"
                ))
            })
        };
        let id = num("SLURM_ARRAY_TASK_ID", &id)?;
        let count = num("SLURM_ARRAY_TASK_COUNT", &count)?;
        let min = match get("SLURM_ARRAY_TASK_MIN") {
            Some(m) => num("SLURM_ARRAY_TASK_MIN", &m)?,
            None => 0,
        };
        let index = id.checked_sub(min).ok_or_else(|| {
            Error::invalid(format!(
                "SLURM_ARRAY_TASK_ID={id} is below SLURM_ARRAY_TASK_MIN={min}"
            ))
        })?;
        Shard::new(index, count).map(Some)
    }
}

impl FromStr for Shard {
    type Err = Error;
    /// `i/n`, e.g. `0/4`.
    fn from_str(s: &str) -> Result<Shard> {
        let bad = || {
            Error::invalid(format!(
                "bad shard `{s}`: expected `i/n` with 0 ≤ i < n, e.g. `0/4`"
            ))
        };
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let i = i.trim().parse().map_err(|_| bad())?;
        let n = n.trim().parse().map_err(|_| bad())?;
        Shard::new(i, n)
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}
