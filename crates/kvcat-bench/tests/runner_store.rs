//! Durability of results directories, with a fake executor: a stable header, skip on
//! re-run, resume after stopping or crashing at any byte, manifest mismatch refusal,
//! checkpoint caching, and failed cells retried.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use kvcat_compressors as _;
use kvcat_policies as _;

mod runner_support;
use kvcat_bench::runner::manifest::Manifest;
use kvcat_bench::runner::store::{csv_header, examples_header, recover, ResultStore};
use kvcat_bench::runner::{run_bench, Grid};
use runner_support::{examples_snapshot, options, snapshot, temp_dir, FakeExecutor, MINI};

fn mini() -> Manifest {
    Manifest::parse(MINI, "mini.toml").unwrap()
}

/// A complete uninterrupted run of the mini manifest into `name`.
fn full_run(name: &str) -> (std::path::PathBuf, FakeExecutor) {
    let dir = temp_dir(name);
    let mut exec = FakeExecutor::default();
    let s = run_bench(&mini(), &options(&dir), &mut exec).unwrap();
    assert_eq!((s.ran, s.skipped, s.failed.len()), (15, 0, 0));
    (dir, exec)
}

#[test]
fn csv_header_is_stable() {
    assert_eq!(
        csv_header(),
        "run_id,cell_id,model,policy,policy_params,compressor,compressor_params,budget,\
         budget_achieved,kv_bytes,task,task_params,query_aware,n,metric,value,stderr,\
         compress_seconds,peak_memory_mb,device,dtype,seed,git_rev,kvcat_version,\
         host_peak_rss_mb,notes"
    );
    let (dir, _) = full_run("header");
    let (csv, _) = snapshot(&dir);
    assert_eq!(csv.lines().next().unwrap(), csv_header());
}

#[test]
fn rows_carry_the_cell_identity_and_rerun_skips_everything() {
    let m = mini();
    let (dir, exec) = full_run("rerun");
    assert_eq!(exec.trained, ["tiny/pretrain", "tiny/none", "tiny/rand"]);
    let rows = recover(&dir).unwrap().rows();
    assert_eq!(rows.len(), 30, "two metrics per cell");
    let grid = Grid::expand(&m).unwrap();
    // Rows follow grid order and carry the cell's identity.
    for (cell, pair) in grid.cells.iter().zip(rows.chunks(2)) {
        for r in pair {
            assert_eq!(r.cell_id, cell.id);
            assert_eq!(r.run_id, m.run_id().unwrap());
            assert_eq!(r.budget, cell.budget.to_string());
            assert_eq!(r.task, "passkey");
            assert_eq!(r.policy, grid.checkpoints[cell.checkpoint].policy);
            assert!(r.model.starts_with("tiny@"));
        }
    }
    assert_eq!(rows[0].compressor, "none");
    assert_eq!(rows[2].compressor, "streaming_llm");
    assert!(
        rows[2].compressor_params.contains("n_sink=4"),
        "{}",
        rows[2].compressor_params
    );

    let before = snapshot(&dir);
    let mut again = FakeExecutor::default();
    let s = run_bench(&m, &options(&dir), &mut again).unwrap();
    assert_eq!((s.ran, s.skipped, s.trained, s.reused), (0, 15, 0, 0));
    assert!(again.evaluated.is_empty() && again.trained.is_empty());
    assert_eq!(snapshot(&dir), before);
}

#[test]
fn resume_after_stopping_after_k_cells_gives_identical_rows() {
    let (reference, _) = full_run("resume-ref");
    let expected = snapshot(&reference);
    for k in [1, 4, 7, 14] {
        let dir = temp_dir(&format!("resume-{k}"));
        let mut o = options(&dir);
        o.max_cells = Some(k);
        let mut first = FakeExecutor::default();
        let s = run_bench(&mini(), &o, &mut first).unwrap();
        assert_eq!(s.ran, k);
        assert!(s.stopped_early);
        let mut second = FakeExecutor::default();
        let s = run_bench(&mini(), &options(&dir), &mut second).unwrap();
        assert_eq!((s.ran, s.skipped), (15 - k, k));
        // Each checkpoint was trained exactly once over both runs.
        let mut trained = first.trained.clone();
        trained.extend(second.trained.clone());
        assert_eq!(
            trained,
            ["tiny/pretrain", "tiny/none", "tiny/rand"],
            "k = {k}"
        );
        assert_eq!(snapshot(&dir), expected, "k = {k}");
    }
}

/// Crash points: `results.csv` cut inside a cell's rows (every byte near a line boundary,
/// and a sample of the others), with the journal before the cell's line; or all rows (and
/// example scores) landed with the journal line absent, torn at every byte, or complete.
#[test]
fn kill_at_any_byte_then_rerun_loses_and_duplicates_nothing() {
    let (reference, _) = full_run("crash-ref");
    let (csv, journal) = snapshot(&reference);
    let examples = examples_snapshot(&reference);
    let rec = recover(&reference).unwrap();
    let ex_counts: Vec<usize> = rec.cell_examples.iter().map(Vec::len).collect();
    let ex_ends = cell_ends(&examples, examples_header().len() + 1, &ex_counts);
    let header_len = csv_header().len() + 1;
    // Byte offsets of cell boundaries in results.csv and cells.done.
    let mut csv_ends = vec![header_len];
    let mut j_ends = vec![0usize];
    let mut lines = csv[header_len..].split_inclusive('\n');
    for ((_, rows), jline) in rec.cells.iter().zip(journal.split_inclusive('\n')) {
        let n: usize = (0..rows.len()).map(|_| lines.next().unwrap().len()).sum();
        csv_ends.push(csv_ends.last().unwrap() + n);
        j_ends.push(j_ends.last().unwrap() + jline.len());
    }
    let dir = temp_dir("crash");
    let mut runs = 0;
    for k in [0, 6, 14] {
        let cell = &csv[csv_ends[k]..csv_ends[k + 1]];
        let near_newline = |i: usize| {
            cell.match_indices('\n')
                .any(|(p, _)| (p as i64 - i as i64).abs() <= 2)
        };
        let cuts: Vec<usize> = (0..=cell.len())
            .filter(|&i| i == 0 || i == cell.len() || i % 29 == 0 || near_newline(i))
            .map(|i| csv_ends[k] + i)
            .collect();
        for cut in cuts {
            let mut states = vec![j_ends[k]];
            if cut == csv_ends[k + 1] {
                // The rows landed; the journal line may be torn or complete.
                states.extend(j_ends[k] + 1..=j_ends[k + 1]);
            }
            for jcut in states {
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir).unwrap();
                for f in ["manifest.toml"] {
                    std::fs::copy(reference.join(f), dir.join(f)).unwrap();
                }
                std::fs::write(dir.join("results.csv"), &csv[..cut]).unwrap();
                std::fs::write(dir.join("cells.done"), &journal[..jcut]).unwrap();
                // Example scores land after the rows and before the journal line.
                let ex_cut = if jcut > j_ends[k] {
                    ex_ends[k + 1]
                } else {
                    ex_ends[k]
                };
                std::fs::write(dir.join("examples.csv"), &examples[..ex_cut]).unwrap();
                let mut o = options(&dir);
                o.checkpoints = reference.join("checkpoints");
                let mut exec = FakeExecutor::default();
                let s = run_bench(&mini(), &o, &mut exec).unwrap();
                let finished = if jcut == j_ends[k + 1] { k + 1 } else { k };
                assert_eq!(s.skipped, finished, "cut {cut}, journal {jcut}");
                assert_eq!(
                    snapshot(&dir),
                    (csv.clone(), journal.clone()),
                    "cut {cut}, journal {jcut}"
                );
                assert_eq!(
                    examples_snapshot(&dir),
                    examples,
                    "cut {cut}, journal {jcut}"
                );
                runs += 1;
            }
        }
    }
    assert!(runs > 60, "{runs} crash points");
}

#[test]
fn a_different_manifest_is_refused_in_the_same_directory() {
    let (dir, _) = full_run("mismatch");
    let other = Manifest::parse(&MINI.replace("n = 2", "n = 3"), "mini.toml").unwrap();
    let e = run_bench(&other, &options(&dir), &mut FakeExecutor::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("different manifest") && e.contains("n = 3"),
        "{e}"
    );
    // Nothing was touched.
    assert_eq!(recover(&dir).unwrap().cells.len(), 15);
}

#[test]
fn checkpoints_are_cached_across_runs_by_content_hash() {
    let (first, _) = full_run("cache-a");
    // A new results directory sharing the checkpoint cache trains nothing.
    let dir = temp_dir("cache-b");
    let mut o = options(&dir);
    o.checkpoints = first.join("checkpoints");
    let mut exec = FakeExecutor::default();
    let s = run_bench(&mini(), &o, &mut exec).unwrap();
    assert_eq!((s.trained, s.reused, s.ran), (0, 3, 15));
    assert!(exec.trained.is_empty());
    // More continuation steps: only the continuations retrain; pretraining is reused.
    let m = Manifest::parse(
        &MINI.replace("[train]\nsteps = 2", "[train]\nsteps = 3"),
        "m.toml",
    )
    .unwrap();
    let dir = temp_dir("cache-c");
    let mut o = options(&dir);
    o.checkpoints = first.join("checkpoints");
    let mut exec = FakeExecutor::default();
    run_bench(&m, &o, &mut exec).unwrap();
    assert_eq!(exec.trained, ["tiny/none", "tiny/rand"]);
    // Each cached checkpoint records what it was trained from.
    let grid = Grid::expand(&m).unwrap();
    let rec = std::fs::read_to_string(
        first
            .join("checkpoints")
            .join(&grid.train_jobs[1].id)
            .join("kvcat-job.toml"),
    )
    .unwrap();
    assert!(
        rec.contains("tiny/none") && rec.contains("steps = 3"),
        "{rec}"
    );
}

#[test]
fn failed_cells_stay_unfinished_and_are_retried() {
    let (reference, _) = full_run("fail-ref");
    let grid = Grid::expand(&mini()).unwrap();
    let dir = temp_dir("fail");
    let mut exec = FakeExecutor::default();
    exec.fail_on.insert(grid.cells[3].id.clone());
    exec.fail_on.insert(grid.cells[9].id.clone());
    let s = run_bench(&mini(), &options(&dir), &mut exec).unwrap();
    assert_eq!((s.ran, s.failed.len(), s.remaining()), (13, 2, 2));
    assert!(
        s.failed[0].1.contains("injected failure") && s.failed[0].1.contains("tiny/base"),
        "{:?}",
        s.failed
    );
    let s = run_bench(&mini(), &options(&dir), &mut FakeExecutor::default()).unwrap();
    assert_eq!((s.ran, s.skipped), (2, 13));
    // Same rows as an uninterrupted run (cell order differs: retried cells come last).
    let mut a = recover(&dir).unwrap().rows();
    let mut b = recover(&reference).unwrap().rows();
    a.sort_by(|x, y| (&x.cell_id, &x.metric).cmp(&(&y.cell_id, &y.metric)));
    b.sort_by(|x, y| (&x.cell_id, &x.metric).cmp(&(&y.cell_id, &y.metric)));
    assert_eq!(a, b);
}

#[test]
fn a_journal_without_its_rows_is_reported_as_corrupt() {
    let (dir, _) = full_run("corrupt");
    let (csv, _) = snapshot(&dir);
    let header_len = csv_header().len() + 1;
    std::fs::write(dir.join("results.csv"), &csv[..header_len]).unwrap();
    let e = ResultStore::open(&dir, &mini())
        .err()
        .expect("corrupt")
        .to_string();
    assert!(e.contains("results.csv") && e.contains("cells.done"), "{e}");
}

/// Byte offsets where each finished cell's lines end in `text` (after a header of
/// `header_len` bytes), given each cell's line count.
fn cell_ends(text: &str, header_len: usize, counts: &[usize]) -> Vec<usize> {
    let mut ends = vec![header_len];
    let mut lines = text[header_len..].split_inclusive('\n');
    for n in counts {
        let len: usize = (0..*n).map(|_| lines.next().unwrap().len()).sum();
        ends.push(ends.last().unwrap() + len);
    }
    ends
}

#[test]
fn per_example_scores_are_journalled_with_their_cell() {
    let (dir, _) = full_run("examples");
    let rec = recover(&dir).unwrap();
    assert_eq!(rec.cell_examples.len(), 15);
    for ((id, _), ex) in rec.cells.iter().zip(&rec.cell_examples) {
        // Two examples × two metrics, stamped with the cell id.
        assert_eq!(ex.len(), 4);
        assert!(ex.iter().all(|e| &e.cell_id == id));
    }
    let text = examples_snapshot(&dir);
    assert_eq!(text.lines().next().unwrap(), examples_header());
    assert_eq!(examples_header(), "cell_id,example,metric,value");
    let (_, journal) = snapshot(&dir);
    assert!(journal.lines().all(|l| l.ends_with(" 2 4")), "{journal}");
}

/// Crash points inside `examples.csv`: a cell's rows landed in `results.csv`, its example
/// scores are cut at every byte near a line boundary (and a sample of the others), and its
/// journal line is absent or torn; or everything landed but the journal line. A re-run gives
/// byte-identical files.
#[test]
fn a_torn_examples_tail_is_dropped_and_rerun_restores_it() {
    let (reference, _) = full_run("ex-crash-ref");
    let (csv, journal) = snapshot(&reference);
    let examples = examples_snapshot(&reference);
    let rec = recover(&reference).unwrap();
    let row_counts: Vec<usize> = rec.cells.iter().map(|(_, r)| r.len()).collect();
    let ex_counts: Vec<usize> = rec.cell_examples.iter().map(Vec::len).collect();
    let csv_ends = cell_ends(&csv, csv_header().len() + 1, &row_counts);
    let ex_ends = cell_ends(&examples, examples_header().len() + 1, &ex_counts);
    let j_ends = cell_ends(&journal, 0, &vec![1; rec.cells.len()]);
    let dir = temp_dir("ex-crash");
    let mut runs = 0;
    for k in [0, 7, 14] {
        let cell = &examples[ex_ends[k]..ex_ends[k + 1]];
        let near_newline = |i: usize| {
            cell.match_indices('\n')
                .any(|(p, _)| (p as i64 - i as i64).abs() <= 1)
        };
        let cuts = (0..=cell.len())
            .filter(|&i| i == 0 || i == cell.len() || i % 17 == 0 || near_newline(i));
        for cut in cuts.map(|i| ex_ends[k] + i) {
            let mut states = vec![j_ends[k]];
            if cut == ex_ends[k + 1] {
                states.extend(j_ends[k] + 1..j_ends[k + 1]);
            } else {
                states.push(j_ends[k] + 3);
            }
            for jcut in states {
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::copy(reference.join("manifest.toml"), dir.join("manifest.toml")).unwrap();
                std::fs::write(dir.join("results.csv"), &csv[..csv_ends[k + 1]]).unwrap();
                std::fs::write(dir.join("examples.csv"), &examples[..cut]).unwrap();
                std::fs::write(dir.join("cells.done"), &journal[..jcut]).unwrap();
                let mut o = options(&dir);
                o.checkpoints = reference.join("checkpoints");
                let s = run_bench(&mini(), &o, &mut FakeExecutor::default()).unwrap();
                assert_eq!(s.skipped, k, "cut {cut}, journal {jcut}");
                assert_eq!(snapshot(&dir), (csv.clone(), journal.clone()), "cut {cut}");
                assert_eq!(
                    examples_snapshot(&dir),
                    examples,
                    "cut {cut}, journal {jcut}"
                );
                runs += 1;
            }
        }
    }
    assert!(runs > 30, "{runs} crash points");
}

/// A results directory from before `examples.csv` (two-field journal lines, no file)
/// recovers, resumes without re-running anything, and gains an empty `examples.csv`.
#[test]
fn an_old_directory_without_examples_recovers_and_resumes() {
    let (dir, _) = full_run("old-format");
    let (csv, journal) = snapshot(&dir);
    let old_journal: String = journal
        .lines()
        .map(|l| format!("{}\n", l.rsplit_once(' ').unwrap().0))
        .collect();
    std::fs::write(dir.join("cells.done"), &old_journal).unwrap();
    std::fs::remove_file(dir.join("examples.csv")).unwrap();
    let rec = recover(&dir).unwrap();
    assert_eq!(rec.cells.len(), 15);
    assert!(rec.examples().is_empty());
    let s = run_bench(&mini(), &options(&dir), &mut FakeExecutor::default()).unwrap();
    assert_eq!((s.ran, s.skipped), (0, 15));
    assert_eq!(snapshot(&dir), (csv, old_journal));
    assert_eq!(examples_snapshot(&dir), format!("{}\n", examples_header()));
}

#[test]
fn examples_listed_in_the_journal_but_missing_are_reported() {
    let (dir, _) = full_run("ex-missing");
    std::fs::remove_file(dir.join("examples.csv")).unwrap();
    let e = recover(&dir).expect_err("missing").to_string();
    assert!(e.contains("examples.csv") && e.contains("missing"), "{e}");
}
