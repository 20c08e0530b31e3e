//! `report`: normalised AUC, signed gains over `none`, and the written report and figures.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use kvcat_compressors as _;
use kvcat_policies as _;

mod runner_support;
use kvcat_bench::report::curves::{auc, build_curves, gains, higher_is_better, Point};
use kvcat_bench::report::paired::paired_gains;
use kvcat_bench::report::{load, load_with_examples, write_report};
use kvcat_bench::results::{ExampleScore, ResultRow};
use kvcat_bench::runner::manifest::Manifest;
use kvcat_bench::runner::{run_bench, CellContext, Grid, ResultStore};
use kvcat_bench::stats::Bootstrap;
use kvcat_core::budget::Budget;
use runner_support::{options, temp_dir, FakeExecutor, MINI};
use std::path::{Path, PathBuf};

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

/// The numbers in the report line that starts with `prefix`, in order.
fn numbers(md: &str, prefix: &str) -> Vec<f64> {
    let line = md
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line `{prefix}` in\n{md}"));
    line.split(|c: char| c == '|' || c == '[' || c == ']' || c == ',' || c.is_whitespace())
        .filter_map(|c| c.replace('−', "-").parse().ok())
        .collect()
}

/// The paired section of a report (from its heading to the next `## `).
fn paired_section(md: &str) -> &str {
    let start = md.find("## Paired gains").expect("paired section");
    let rest = &md[start + 3..];
    &md[start..start + 3 + rest.find("\n## ").unwrap_or(rest.len())]
}

#[test]
fn paired_gains_match_the_curves_and_a_constant_gain_is_significant() {
    let m = Manifest::parse(MINI, "mini.toml").unwrap();
    let dir = temp_dir("report-paired");
    run_bench(&m, &options(&dir), &mut FakeExecutor::default()).unwrap();
    let (m, rows, examples, _) = load_with_examples(&dir).unwrap();
    assert_eq!(examples.len(), 15 * 4);
    let paired = paired_gains(&m, &rows, &examples, &Bootstrap::default());
    let curve_gains = gains(&build_curves(&m, &rows));
    // The mean paired AUC difference is the difference of the curves' AUCs.
    for g in curve_gains.iter() {
        let p = paired
            .iter()
            .find(|p| {
                (&p.model, &p.policy, &p.compressor, &p.task) == (&g.0, &g.1, &g.2, &g.3)
                    && p.metric == "string_match_all"
                    && p.budget.is_none()
            })
            .unwrap_or_else(|| panic!("no paired gain for {g:?}"));
        assert!((p.interval.mean - g.4).abs() < 1e-12, "{p:?} vs {g:?}");
        // The fake's per-example offsets cancel in the difference: the interval is a point.
        assert!(p.interval.hi - p.interval.lo < 1e-12, "{p:?}");
        assert!(p.interval.significant());
        assert_eq!((p.interval.examples, p.interval.seeds), (2, 1));
    }
    // `nll` is lower-is-better: its gain has the same sign as the match rate's.
    let nll = paired
        .iter()
        .find(|p| p.policy == "rand" && p.metric == "nll" && p.budget.is_none())
        .unwrap();
    assert!(nll.interval.mean > 0.0, "{nll:?}");
    // Per budget: rand adds 0.1·(1 − b); at the uncompressed reference nothing differs.
    let at = |b: &str| {
        paired
            .iter()
            .find(|p| {
                p.policy == "rand"
                    && p.compressor == "knorm"
                    && p.metric == "string_match_all"
                    && p.budget.as_deref() == Some(b)
            })
            .unwrap()
            .interval
    };
    assert!((at("0.25").mean - 0.075).abs() < 1e-9);
    assert!((at("0.5").mean - 0.05).abs() < 1e-9);
    let reference = paired
        .iter()
        .find(|p| p.policy == "rand" && p.compressor == "none" && p.metric == "nll")
        .unwrap();
    assert_eq!(reference.interval.mean, 0.0);
    assert!(!reference.interval.significant());

    let s = write_report(&dir).unwrap();
    let md = std::fs::read_to_string(&s.report).unwrap();
    let section = paired_section(&md);
    for needle in [
        "### passkey — `string_match_all` ↑ (2 examples)",
        "### passkey — `nll` ↓ (2 examples)",
        "| model | policy | streaming_llm | knorm |",
        "| model | policy | compressor | 0.25 | 0.5 | 1 |",
        "2000 resamples",
    ] {
        assert!(section.contains(needle), "missing `{needle}` in\n{section}");
    }
    let expected = (0.25 * (0.075 + 0.05) / 2.0 + 0.5 * 0.05 / 2.0) / 0.75;
    let nums = numbers(section, "| tiny | rand | +");
    assert_eq!(nums.len(), 6, "two compressors × (mean, lo, hi): {nums:?}");
    assert!(nums.iter().all(|v| (v - expected).abs() < 1e-3), "{nums:?}");
    let rand_line = section
        .lines()
        .find(|l| l.starts_with("| tiny | rand | +"))
        .unwrap();
    assert_eq!(rand_line.matches("] ✱").count(), 2, "{rand_line}");
    // The heatmap of the one task, as SVG and PNG, linked from the report.
    assert!(
        md.contains("## KV-CAT matrix")
            && md.contains("![gain-tiny-passkey.png](plots/gain-tiny-passkey.png)"),
        "{md}"
    );
    let png = std::fs::read(dir.join("plots/gain-tiny-passkey.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let svg = std::fs::read_to_string(dir.join("plots/gain-tiny-passkey.svg")).unwrap();
    let rand_knorm = paired
        .iter()
        .find(|p| p.policy == "rand" && p.compressor == "knorm" && p.budget.is_none())
        .unwrap();
    let marked = format!("{:+.3}*", rand_knorm.interval.mean);
    for needle in ["rand", "base", "streaming_llm", "knorm", marked.as_str()] {
        assert!(svg.contains(needle), "svg lacks `{needle}`");
    }
}

const N_FAB: usize = 30;

/// A fabricated results directory of the mini manifest with `N_FAB` examples per cell:
/// `value(policy, compressed?, budget, example)` gives each example's match score, and a
/// cell's row holds their mean.
fn fabricate(name: &str, value: impl Fn(&str, bool, f64, usize) -> f64) -> PathBuf {
    let m = Manifest::parse(MINI, "mini.toml").unwrap();
    let grid = Grid::expand(&m).unwrap();
    let run_id = m.run_id().unwrap();
    let dir = temp_dir(name);
    let mut store = ResultStore::open(&dir, &m).unwrap();
    for cell in &grid.cells {
        let checkpoint = &grid.checkpoints[cell.checkpoint];
        let ctx = CellContext {
            manifest: &m,
            run_id: &run_id,
            cell,
            checkpoint,
            weights: Path::new("."),
            git_rev: "test",
        };
        let Budget::Fraction(b) = cell.budget else {
            panic!("fraction budgets only")
        };
        let values: Vec<f64> = (0..N_FAB)
            .map(|i| value(&checkpoint.policy, !cell.is_reference(), b, i))
            .collect();
        let mut row = ResultRow {
            metric: "string_match_all".into(),
            value: values.iter().sum::<f64>() / N_FAB as f64,
            stderr: 0.05,
            n: N_FAB,
            budget_achieved: b,
            ..Default::default()
        };
        ctx.stamp(&mut row);
        let examples: Vec<ExampleScore> = values
            .iter()
            .enumerate()
            .map(|(i, v)| ExampleScore {
                cell_id: cell.id.clone(),
                example: format!("q{i}"),
                metric: "string_match_all".into(),
                value: *v,
            })
            .collect();
        store.append_cell(&cell.id, &[row], &examples).unwrap();
    }
    dir
}

/// `none` varies by example; `rand` adds ±0.1·(1 − b) alternating by example (mean 0);
/// `base` loses 0.1·(1 − b) on every example, plus a small example-dependent wobble.
fn fabricated_value(policy: &str, _compressed: bool, b: f64, i: usize) -> f64 {
    let none = 0.3 + 0.6 * b + 0.2 * (((i * 7) % 10) as f64 / 10.0 - 0.45);
    match policy {
        "rand" => none + 0.1 * (1.0 - b) * if i.is_multiple_of(2) { 1.0 } else { -1.0 },
        "base" => none - 0.1 * (1.0 - b) + 0.01 * (i % 3) as f64,
        _ => none,
    }
}

#[test]
fn a_fabricated_directory_marks_only_the_real_effect_significant() {
    let dir = fabricate("report-fabricated", fabricated_value);
    let s = write_report(&dir).unwrap();
    assert_eq!(
        (s.paired_aucs, s.significant_aucs),
        (4, 2),
        "rand and base × 2 compressors"
    );
    let md = std::fs::read_to_string(&s.report).unwrap();
    let section = paired_section(&md);
    assert!(section.contains("(30 examples)"), "{section}");
    let rand_line = section
        .lines()
        .find(|l| l.starts_with("| tiny | rand | ") && !l.contains("streaming_llm |"))
        .unwrap();
    assert!(
        !rand_line.contains('✱'),
        "a mean-zero difference is not significant: {rand_line}"
    );
    let rand = numbers(section, "| tiny | rand | ");
    assert!(
        rand[0].abs() < 6e-4 && rand[1] < 0.0 && rand[2] > 0.0,
        "{rand:?}"
    );
    let base_line = section
        .lines()
        .find(|l| l.starts_with("| tiny | base | ") && !l.contains("streaming_llm |"))
        .unwrap();
    assert_eq!(base_line.matches('✱').count(), 2, "{base_line}");
    // AUC of −0.1·(1 − b) over [0.25, 1] is −0.0375; the wobble adds its mean, 0.01.
    let base = numbers(section, "| tiny | base | ");
    assert!((base[0] + 0.0275).abs() < 6e-4 && base[2] < 0.0, "{base:?}");
    // Per budget: base at 0.25 loses 0.075 − 0.01.
    let per_budget = numbers(section, "| tiny | base | knorm |");
    assert!((per_budget[0] + 0.065).abs() < 6e-4, "{per_budget:?}");
    assert!(dir.join("plots/gain-tiny-passkey.svg").exists());
}

#[test]
fn an_old_directory_without_examples_still_reports() {
    let m = Manifest::parse(MINI, "mini.toml").unwrap();
    let dir = temp_dir("report-old");
    run_bench(&m, &options(&dir), &mut FakeExecutor::default()).unwrap();
    let journal = std::fs::read_to_string(dir.join("cells.done")).unwrap();
    let old: String = journal
        .lines()
        .map(|l| format!("{}\n", l.rsplit_once(' ').unwrap().0))
        .collect();
    std::fs::write(dir.join("cells.done"), old).unwrap();
    std::fs::remove_file(dir.join("examples.csv")).unwrap();
    let s = write_report(&dir).unwrap();
    let md = std::fs::read_to_string(&s.report).unwrap();
    assert!(paired_section(&md).contains("no per-example data"), "{md}");
    assert!(md.contains("## KV-CAT gain over `none`"));
    // The heatmap falls back to the difference of means, without intervals.
    let svg = std::fs::read_to_string(dir.join("plots/gain-tiny-passkey.svg")).unwrap();
    assert!(
        svg.contains("no per-example data") && !svg.contains('['),
        "heatmap without intervals"
    );
}

#[test]
fn training_seeds_are_averaged_in_curves_and_resampled_in_pairs() {
    let text = MINI.replace(
        "budgets = [0.25, 0.5, 1.0]",
        "budgets = [0.25, 0.5, 1.0]\nseeds = [0, 1]",
    );
    let m = Manifest::parse(&text, "mini.toml").unwrap();
    let dir = temp_dir("report-seeds");
    run_bench(&m, &options(&dir), &mut FakeExecutor::default()).unwrap();
    let (m, rows, examples, cells) = load_with_examples(&dir).unwrap();
    assert_eq!(cells, 5 * 5, "base + 2 policies × 2 seeds, 5 cells each");
    let curves = build_curves(&m, &rows);
    assert_eq!(
        curves.len(),
        6,
        "one curve per policy × compressor, seeds averaged"
    );
    assert!(curves.iter().all(|c| c.points.len() == 3), "{curves:?}");
    let paired = paired_gains(&m, &rows, &examples, &Bootstrap::default());
    let rand = paired
        .iter()
        .find(|p| p.policy == "rand" && p.budget.is_none() && p.metric == "string_match_all")
        .unwrap();
    assert_eq!((rand.interval.seeds, rand.interval.examples), (2, 4));
    // `base` has no seeds: it pairs with each seed of `none`.
    let md = std::fs::read_to_string(write_report(&dir).unwrap().report).unwrap();
    assert!(paired_section(&md).contains("2 examples, 2 seeds"), "{md}");
}
