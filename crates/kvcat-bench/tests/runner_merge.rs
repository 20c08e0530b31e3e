//! `merge`: shards of one manifest merge into exactly the unsharded results; mismatched
//! manifests are refused; missing shards are counted.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use kvcat_compressors as _;
use kvcat_policies as _;

mod runner_support;
use kvcat_bench::runner::manifest::Manifest;
use kvcat_bench::runner::merge::merge;
use kvcat_bench::runner::{run_bench, Shard};
use runner_support::{examples_snapshot, options, snapshot, temp_dir, FakeExecutor, MINI};

fn run_shard(
    m: &Manifest,
    name: &str,
    shard: Option<Shard>,
    ckpts: &std::path::Path,
) -> std::path::PathBuf {
    let dir = temp_dir(name);
    let mut o = options(&dir);
    o.shard = shard;
    o.checkpoints = ckpts.to_path_buf();
    run_bench(m, &o, &mut FakeExecutor::default()).unwrap();
    dir
}

#[test]
fn merged_shards_equal_the_unsharded_run() {
    let m = Manifest::parse(MINI, "mini.toml").unwrap();
    let ckpts = temp_dir("merge-ckpts");
    let whole = run_shard(&m, "merge-whole", None, &ckpts);
    for n in [2, 4, 6] {
        let shards: Vec<_> = (0..n)
            .map(|i| {
                run_shard(
                    &m,
                    &format!("merge-{n}-{i}"),
                    Some(Shard::new(i, n).unwrap()),
                    &ckpts,
                )
            })
            .collect();
        // Shard order on the command line does not matter.
        let mut inputs = shards.clone();
        inputs.reverse();
        let out = temp_dir(&format!("merge-{n}-out"));
        let s = merge(&inputs, &out).unwrap();
        assert_eq!(
            (s.cells, s.grid_cells, s.missing(), s.duplicates),
            (15, 15, 0, 0),
            "n = {n}"
        );
        assert_eq!(snapshot(&out), snapshot(&whole), "n = {n}");
        assert_eq!(
            examples_snapshot(&out),
            examples_snapshot(&whole),
            "n = {n}"
        );
        assert_eq!(
            std::fs::read_to_string(out.join("manifest.toml")).unwrap(),
            std::fs::read_to_string(whole.join("manifest.toml")).unwrap()
        );
        // Merging again into the same output changes nothing.
        let s = merge(&inputs, &out).unwrap();
        assert_eq!(s.written, 0);
        assert_eq!(snapshot(&out), snapshot(&whole));
    }
}

#[test]
fn missing_shards_and_overlaps_are_counted() {
    let m = Manifest::parse(MINI, "mini.toml").unwrap();
    let ckpts = temp_dir("merge-miss-ckpts");
    let a = run_shard(&m, "merge-miss-0", Some(Shard::new(0, 3).unwrap()), &ckpts);
    let whole = run_shard(&m, "merge-miss-whole", None, &ckpts);
    let out = temp_dir("merge-miss-out");
    let s = merge(&[a.clone()], &out).unwrap();
    assert_eq!((s.cells, s.missing()), (5, 10));
    // Overlapping inputs: the whole run repeats shard 0's cells.
    let out2 = temp_dir("merge-overlap-out");
    let s = merge(&[a, whole.clone()], &out2).unwrap();
    assert_eq!((s.cells, s.duplicates), (15, 5));
    assert_eq!(snapshot(&out2), snapshot(&whole));
}

#[test]
fn mismatched_manifests_are_refused() {
    let m = Manifest::parse(MINI, "mini.toml").unwrap();
    let other = Manifest::parse(&MINI.replace("seed = 1", "seed = 2"), "mini.toml").unwrap();
    let ckpts = temp_dir("merge-bad-ckpts");
    let a = run_shard(&m, "merge-bad-a", Some(Shard::new(0, 2).unwrap()), &ckpts);
    let b = run_shard(
        &other,
        "merge-bad-b",
        Some(Shard::new(1, 2).unwrap()),
        &ckpts,
    );
    let out = temp_dir("merge-bad-out");
    let e = merge(&[a.clone(), b], &out).unwrap_err().to_string();
    assert!(
        e.contains("different manifests") && e.contains("seed = 1") && e.contains("seed = 2"),
        "{e}"
    );
    assert!(!out.join("results.csv").exists(), "nothing written");
    let e = merge(&[a.clone()], &a).unwrap_err().to_string();
    assert!(e.contains("also an input"), "{e}");
    let e = merge(&[temp_dir("merge-empty")], &out)
        .unwrap_err()
        .to_string();
    assert!(e.contains("manifest.toml"), "{e}");
}
