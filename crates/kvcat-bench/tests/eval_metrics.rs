//! Metric functions on hand-worked cases.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use kvcat_bench::metrics::*;

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[test]
fn ruler_string_match() {
    // RULER: fraction of references contained in the prediction, case-insensitively.
    let golds = s(&["1234567", "Blue-Tiger", "42"]);
    assert_eq!(
        string_match_all("the numbers are 1234567 and blue-tiger.", &golds),
        2.0 / 3.0
    );
    assert_eq!(string_match_all("nothing", &golds), 0.0);
    assert_eq!(string_match_all("1234567 BLUE-TIGER 42", &golds), 1.0);
    assert_eq!(string_match_part("42!", &golds), 1.0);
    assert_eq!(string_match_part("4 2", &golds), 0.0);
}

#[test]
fn squad_exact_match_and_f1() {
    assert_eq!(
        normalize_answer("The  Quick, brown fox!"),
        "quick brown fox"
    );
    assert_eq!(exact_match("the France.", &s(&["France"])), 1.0);
    assert_eq!(exact_match("in France", &s(&["France", "Paris"])), 0.0);
    // pred "in the 10th century" → [in, 10th, century]; gold "10th and 11th centuries" →
    // [10th, and, 11th, centuries]: 1 common, P = 1/3, R = 1/4, F1 = 2·(1/12)/(7/12) = 2/7.
    let f = token_f1("in the 10th century", &s(&["10th and 11th centuries"]));
    assert!((f - 2.0 / 7.0).abs() < 1e-12, "{f}");
    // Max over golds; repeated tokens count with multiplicity.
    assert_eq!(token_f1("10th century", &s(&["x", "10th century"])), 1.0);
    let f = token_f1("a a b", &s(&["a b b"]));
    // "a" is an article and is dropped: pred → [b], gold → [b, b]; common 1, P = 1,
    // R = 1/2, F1 = 2/3.
    assert!((f - 2.0 / 3.0).abs() < 1e-12, "{f}");
    assert_eq!(token_f1("", &s(&["x"])), 0.0);
}

#[test]
fn mean_stderr_and_perplexity() {
    let m = mean_stderr(&[1.0, 0.0, 1.0, 0.0]);
    // sd (n−1) = sqrt(1/3); stderr = sqrt(1/3)/2.
    assert_eq!(m.mean, 0.5);
    assert!((m.stderr - (1.0f64 / 3.0).sqrt() / 2.0).abs() < 1e-12);
    assert_eq!(mean_stderr(&[0.7]).stderr, 0.0);
    assert!(mean_stderr(&[]).mean.is_nan());
    let p = perplexity(&[2.0, 2.0]);
    assert!((p.mean - 2.0f64.exp()).abs() < 1e-12);
    assert_eq!(p.stderr, 0.0);
}
