//! `report`: normalised AUC, signed gains over `none`, and the written report and figures.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use kvcat_compressors as _;
use kvcat_policies as _;

mod runner_support;
use kvcat_bench::report::curves::{auc, build_curves, gains, higher_is_better, Point};
use kvcat_bench::report::{load, write_report};
use kvcat_bench::runner::manifest::Manifest;
use kvcat_bench::runner::run_bench;
use runner_support::{options, temp_dir, FakeExecutor, MINI};

fn p(budget: f64, value: f64) -> Point {
    Point {
        budget,
        value,
        stderr: 0.0,
    }
}

#[test]
fn auc_is_the_mean_over_the_budget_range() {
    // Trapezoids: 0.25·(0.5+0.7)/2 + 0.5·(0.7+1.0)/2 = 0.575 over a width of 0.75.
    let a = auc(&[p(0.25, 0.5), p(0.5, 0.7), p(1.0, 1.0)]);
    assert!((a - 0.575 / 0.75).abs() < 1e-12, "{a}");
    assert_eq!(
        auc(&[p(0.5, 0.3), p(1.0, 0.3)]),
        0.3,
        "a constant curve's AUC is the constant"
    );
    assert_eq!(auc(&[p(1.0, 0.9)]), 0.9);
    assert!(auc(&[]).is_nan());
    assert!(
        higher_is_better("string_match_all")
            && !higher_is_better("nll")
            && !higher_is_better("ppl_full")
    );
}

#[test]
fn report_tables_gains_and_figures() {
    let m = Manifest::parse(MINI, "mini.toml").unwrap();
    let dir = temp_dir("report");
    run_bench(&m, &options(&dir), &mut FakeExecutor::default()).unwrap();
    let (m2, rows, cells) = load(&dir).unwrap();
    assert_eq!((cells, rows.len()), (15, 30));
    let curves = build_curves(&m2, &rows);
    // 3 policies × 2 compressors × 1 task, on the task's first metric, with the reference.
    assert_eq!(curves.len(), 6);
    for c in &curves {
        assert_eq!(c.metric, "string_match_all");
        assert_eq!(
            c.points.iter().map(|p| p.budget).collect::<Vec<_>>(),
            [0.25, 0.5, 1.0]
        );
        assert_eq!(c.points[2].value, 1.0, "the reference closes every curve");
    }
    // The fake's `rand` adds 0.1·(1 − b) at every compressed budget: its gain over `none` is
    // the AUC of that bump: (0.25·(0.075+0.05)/2 + 0.5·(0.05+0)/2) / 0.75.
    let g = gains(&curves);
    let expected = (0.25 * (0.075 + 0.05) / 2.0 + 0.5 * 0.05 / 2.0) / 0.75;
    let rand: Vec<_> = g.iter().filter(|x| x.1 == "rand").collect();
    assert_eq!(rand.len(), 2);
    for x in &rand {
        assert!((x.4 - expected).abs() < 1e-9, "{x:?} vs {expected}");
    }
    assert!(g.iter().filter(|x| x.1 == "base").all(|x| x.4 < 0.0));

    let s = write_report(&dir).unwrap();
    let md = std::fs::read_to_string(&s.report).unwrap();
    for needle in [
        "# kvcat report: mini",
        "15 of 15 cells",
        "## Area under the quality–budget curve",
        "### passkey — `string_match_all` ↑",
        "| model | policy | streaming_llm | knorm |",
        "## KV-CAT gain over `none`",
        "## Uncompressed reference",
        "![tiny.png](plots/tiny.png)",
    ] {
        assert!(md.contains(needle), "missing `{needle}` in\n{md}");
    }
    let line = md
        .lines()
        .find(|l| l.starts_with("| tiny | rand | streaming_llm |"))
        .expect("gain row");
    let nums: Vec<f64> = line
        .split('|')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    assert_eq!(nums.len(), 1, "{line}");
    assert!(nums.iter().all(|v| (v - expected).abs() < 1e-3), "{line}");
    let png = std::fs::read(dir.join("plots/tiny.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let svg = std::fs::read_to_string(dir.join("plots/tiny.svg")).unwrap();
    assert!(
        svg.contains("<svg") && svg.contains("passkey · knorm") && svg.contains("rand"),
        "svg text"
    );
}

#[test]
fn report_refuses_a_directory_without_results() {
    let e = write_report(&temp_dir("report-empty"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a kvcat results directory"), "{e}");
}
