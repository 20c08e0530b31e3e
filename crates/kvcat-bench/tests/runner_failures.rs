//! The failure path of a sweep, with injected failures: one cell's executor panics the way
//! tch does on a CUDA out-of-memory, another returns an error. The sweep finishes every other
//! cell, `failed.csv` marks the two with their messages, the directory still reports, and a
//! re-run retries exactly those two and clears them.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use kvcat_compressors as _;
use kvcat_policies as _;

mod runner_support;
use indicatif::ProgressBar;
use kvcat_bench::report::write_report;
use kvcat_bench::results::ResultRow;
use kvcat_bench::runner::failures::{read_failed, FAILED_FILE};
use kvcat_bench::runner::jobs::TrainJob;
use kvcat_bench::runner::manifest::Manifest;
use kvcat_bench::runner::store::recover;
use kvcat_bench::runner::{run_bench, CellContext, CellExecutor, CellOutput, Grid};
use kvcat_core::{Error, Result};
use runner_support::{options, temp_dir, FakeExecutor, MINI};
use std::path::Path;

fn mini() -> Manifest {
    Manifest::parse(MINI, "mini.toml").unwrap()
}

/// The fake executor, except that one cell panics (as tch does when libtorch throws, e.g.
/// `CUDA out of memory`) and another fails with an error.
struct Injecting {
    inner: FakeExecutor,
    panic_on: String,
    error_on: String,
}

impl CellExecutor for Injecting {
    fn train(
        &mut self,
        job: &TrainJob,
        init: Option<&Path>,
        out: &Path,
        pb: &ProgressBar,
    ) -> Result<()> {
        self.inner.train(job, init, out, pb)
    }

    fn evaluate(&mut self, ctx: &CellContext) -> Result<CellOutput> {
        if ctx.cell.id == self.panic_on {
            panic!("Torch(\"CUDA out of memory. Tried to allocate 2.00 GiB\")");
        }
        if ctx.cell.id == self.error_on {
            return Err(Error::invalid("injected evaluation error"));
        }
        self.inner.evaluate(ctx)
    }
}

fn sorted(mut rows: Vec<ResultRow>) -> Vec<ResultRow> {
    rows.sort_by(|x, y| (&x.cell_id, &x.metric).cmp(&(&y.cell_id, &y.metric)));
    rows
}

#[test]
fn a_failing_cell_is_marked_failed_the_sweep_finishes_and_a_rerun_retries_it() {
    let m = mini();
    let grid = Grid::expand(&m).unwrap();
    let reference = temp_dir("failures-ref");
    run_bench(&m, &options(&reference), &mut FakeExecutor::default()).unwrap();

    let dir = temp_dir("failures");
    // Cells 4 and 5 share a group (one checkpoint, task and compressor): the panic takes
    // down its whole group, as a real out-of-memory in a shared prefill would.
    let (oom, bad) = (grid.cells[4].id.clone(), grid.cells[10].id.clone());
    let mut exec = Injecting {
        inner: FakeExecutor::default(),
        panic_on: oom.clone(),
        error_on: bad.clone(),
    };
    let s = run_bench(&m, &options(&dir), &mut exec).unwrap();
    let group_of_oom: Vec<&str> = grid
        .cells
        .iter()
        .filter(|c| {
            let o = grid.cells.iter().find(|x| x.id == oom).unwrap();
            (c.checkpoint, c.task, c.compressor) == (o.checkpoint, o.task, o.compressor)
        })
        .map(|c| c.id.as_str())
        .collect();
    let n_failed = group_of_oom.len() + 1;
    assert_eq!(
        (s.ran, s.failed.len()),
        (15 - n_failed, n_failed),
        "{:?}",
        s.failed
    );

    // failed.csv marks exactly the failed cells, with their messages.
    let failed = read_failed(&dir).unwrap();
    let mut ids: Vec<&str> = failed.iter().map(|f| f.cell_id.as_str()).collect();
    ids.sort();
    let mut expected: Vec<&str> = group_of_oom.clone();
    expected.push(&bad);
    expected.sort();
    assert_eq!(ids, expected);
    let oom_row = failed.iter().find(|f| f.cell_id == oom).unwrap();
    assert!(
        oom_row.error.contains("panicked") && oom_row.error.contains("CUDA out of memory"),
        "{oom_row:?}"
    );
    assert!(oom_row.label.contains("tiny/"), "{oom_row:?}");
    let bad_row = failed.iter().find(|f| f.cell_id == bad).unwrap();
    assert!(
        bad_row.error.contains("injected evaluation error"),
        "{bad_row:?}"
    );
    // The partial directory is consistent and reportable.
    assert_eq!(recover(&dir).unwrap().cells.len(), 15 - n_failed);
    write_report(&dir).unwrap();

    // A re-run evaluates only the failed cells, and clears them from failed.csv.
    let mut healthy = FakeExecutor::default();
    let s = run_bench(&m, &options(&dir), &mut healthy).unwrap();
    assert_eq!(
        (s.ran, s.skipped, s.previously_failed),
        (n_failed, 15 - n_failed, n_failed)
    );
    let mut retried: Vec<&str> = healthy.evaluated.iter().map(String::as_str).collect();
    retried.sort();
    assert_eq!(retried, expected);
    assert!(read_failed(&dir).unwrap().is_empty());
    let text = std::fs::read_to_string(dir.join(FAILED_FILE)).unwrap();
    assert_eq!(text.lines().count(), 1, "only the header is left: {text}");
    assert_eq!(
        sorted(recover(&dir).unwrap().rows()),
        sorted(recover(&reference).unwrap().rows())
    );
}

#[test]
fn a_torn_failure_line_is_dropped_and_the_log_stays_readable() {
    let m = mini();
    let grid = Grid::expand(&m).unwrap();
    let dir = temp_dir("failures-torn");
    let mut exec = FakeExecutor::default();
    exec.fail_on.insert(grid.cells[0].id.clone());
    run_bench(&m, &options(&dir), &mut exec).unwrap();
    // A kill in the middle of appending the next failure line.
    let mut text = std::fs::read_to_string(dir.join(FAILED_FILE)).unwrap();
    text.push_str("abc123,tiny/none passkey kn");
    std::fs::write(dir.join(FAILED_FILE), &text).unwrap();
    assert_eq!(read_failed(&dir).unwrap().len(), 1);
    let mut exec = FakeExecutor::default();
    exec.fail_on.insert(grid.cells[0].id.clone());
    let s = run_bench(&m, &options(&dir), &mut exec).unwrap();
    assert_eq!((s.ran, s.failed.len(), s.previously_failed), (0, 1, 1));
    let failed = read_failed(&dir).unwrap();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].cell_id, grid.cells[0].id);
}
