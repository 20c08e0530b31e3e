//! New result columns are appended at the end, so a `results.csv` written by an older kvcat
//! (fewer columns) still reads, and `kvcat bench` upgrades it in place before appending.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use kvcat_compressors as _;
use kvcat_policies as _;

mod runner_support;
use kvcat_bench::runner::manifest::Manifest;
use kvcat_bench::runner::run_bench;
use kvcat_bench::runner::store::{csv_header, recover};
use runner_support::{options, temp_dir, FakeExecutor, MINI};

/// The columns a kvcat before `kvcat_version` wrote.
const OLD_COLUMNS: usize = 23;

fn drop_new_columns(text: &str) -> String {
    let mut out = String::new();
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(text.as_bytes());
    let mut w = csv::Writer::from_writer(vec![]);
    for rec in rdr.records() {
        let rec = rec.unwrap();
        w.write_record(rec.iter().take(OLD_COLUMNS)).unwrap();
    }
    out.push_str(&String::from_utf8(w.into_inner().unwrap()).unwrap());
    out
}

#[test]
fn an_older_results_csv_reads_and_is_upgraded_before_appending() {
    let m = Manifest::parse(MINI, "mini.toml").unwrap();
    let dir = temp_dir("columns-old");
    let mut o = options(&dir);
    o.max_cells = Some(5);
    run_bench(&m, &o, &mut FakeExecutor::default()).unwrap();
    let text = std::fs::read_to_string(dir.join("results.csv")).unwrap();
    let old = drop_new_columns(&text);
    assert!(!old.lines().next().unwrap().contains("kvcat_version"));
    std::fs::write(dir.join("results.csv"), &old).unwrap();

    // Read as is: the new columns take their defaults.
    let rec = recover(&dir).unwrap();
    assert!(rec.old_header);
    assert_eq!(rec.cells.len(), 5);
    assert!(rec
        .rows()
        .iter()
        .all(|r| r.kvcat_version.is_empty() && r.notes.is_empty()));

    // A run upgrades the file, then appends rows that match its header.
    let s = run_bench(&m, &options(&dir), &mut FakeExecutor::default()).unwrap();
    assert_eq!((s.skipped, s.ran), (5, 10));
    let text = std::fs::read_to_string(dir.join("results.csv")).unwrap();
    assert_eq!(text.lines().next().unwrap(), csv_header());
    let rec = recover(&dir).unwrap();
    assert!(!rec.old_header);
    assert_eq!(rec.cells.len(), 15);
    let rows = rec.rows();
    assert!(rows[..10].iter().all(|r| r.kvcat_version.is_empty()));
    assert!(rows[10..]
        .iter()
        .all(|r| r.kvcat_version == env!("CARGO_PKG_VERSION")));
}

#[test]
fn a_foreign_header_is_still_refused() {
    let m = Manifest::parse(MINI, "mini.toml").unwrap();
    let dir = temp_dir("columns-foreign");
    let mut o = options(&dir);
    o.max_cells = Some(1);
    run_bench(&m, &o, &mut FakeExecutor::default()).unwrap();
    let text = std::fs::read_to_string(dir.join("results.csv")).unwrap();
    std::fs::write(
        dir.join("results.csv"),
        text.replacen("run_id,cell_id", "cell_id,run_id", 1),
    )
    .unwrap();
    let e = recover(&dir).unwrap_err().to_string();
    assert!(e.contains("unexpected header"), "{e}");
}
