//! The RULER needle family: registration, determinism, sizing, needles and answers in place,
//! depth, bad input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod tasks_support;
use kvcat_bench as _;
use tasks_support::{context_text, task, tokenizer};

const NAMES: [&str; 4] = [
    "niah_single",
    "niah_multikey",
    "niah_multivalue",
    "niah_multiquery",
];

#[test]
fn registered() {
    let all = kvcat_core::registry::all::<kvcat_core::task::TaskDescriptor>().unwrap();
    for n in NAMES {
        assert!(all.contains_key(n), "{n} missing from {:?}", all.keys());
    }
}

#[test]
fn deterministic_sized_and_answerable() {
    let tok = tokenizer();
    for name in NAMES {
        for (hay, len) in [("essay", 600usize), ("repeat", 300), ("needle", 800)] {
            let t = task(name, &format!("context_len = {len}\nhaystack = \"{hay}\""));
            let a = t.examples(&tok, 3, 11).unwrap();
            assert_eq!(a, t.examples(&tok, 3, 11).unwrap(), "{name}/{hay}");
            for e in &a {
                let text = context_text(e);
                let n = tok.encode(text).unwrap().len();
                assert!(
                    (n as f64 - len as f64).abs() <= 0.05 * len as f64,
                    "{name}/{hay}: {n} tokens for {len}"
                );
                for ans in &e.answers {
                    assert!(
                        text.contains(&format!("is: {ans}.")),
                        "{name}/{hay}: answer {ans} not in context"
                    );
                }
                assert_eq!(e.metric, kvcat_core::task::Metric::StringMatchAll);
            }
            let want = match name {
                "niah_multivalue" | "niah_multiquery" => 4,
                _ => 1,
            };
            assert_eq!(a[0].answers.len(), want, "{name}");
        }
    }
}

#[test]
fn templates_follow_ruler() {
    let tok = tokenizer();
    let single = &task("niah_single", "context_len = 300")
        .examples(&tok, 1, 0)
        .unwrap()[0];
    assert!(context_text(single).starts_with("A special magic number is hidden"));
    assert!(single
        .question
        .starts_with("\nWhat is the special magic number for "));
    assert!(single
        .answer_prefix
        .ends_with("mentioned in the provided text is"));
    let multi = &task("niah_multiquery", "context_len = 600")
        .examples(&tok, 1, 0)
        .unwrap()[0];
    assert!(context_text(multi).starts_with("Some special magic numbers are hidden"));
    assert!(multi.question.contains(", and "), "{}", multi.question);
    assert!(multi.answer_prefix.ends_with("are"));
    // The four keys of multikey: only one is asked, the other three are distractors.
    let mk = &task("niah_multikey", "context_len = 600")
        .examples(&tok, 1, 0)
        .unwrap()[0];
    assert_eq!(
        context_text(mk)
            .matches("One of the special magic numbers for")
            .count(),
        4
    );
}

#[test]
fn needle_at_requested_depth() {
    let tok = tokenizer();
    for depth in [0.0, 0.3, 0.7, 1.0] {
        let t = task(
            "niah_single",
            &format!("context_len = 800\ndepth = {depth}"),
        );
        let e = &t.examples(&tok, 1, 5).unwrap()[0];
        let text = context_text(e);
        let start = text.find("afterwards.\n").unwrap() + "afterwards.\n".len();
        let needle = text.find("One of the special magic").unwrap();
        let end = needle + text[needle..].find('.').unwrap() + 1;
        let before = tok.encode(&text[start..needle]).unwrap().len() as f64;
        let after = tok.encode(&text[end..]).unwrap().len() as f64;
        let measured = before / (before + after);
        assert!(
            (measured - depth).abs() < 0.03,
            "{depth}: measured {measured:.3}"
        );
    }
}

#[test]
fn bad_input_is_a_clear_error() {
    for (name, params, needle) in [
        ("niah_single", "depth = 2.0", "depth"),
        (
            "niah_single",
            "haystack = \"novel\"",
            "essay, repeat, needle",
        ),
        ("niah_multikey", "key_type = \"emoji\"", "key_type"),
        (
            "niah_multikey",
            "essays = \"/nonexistent/essays.json\"",
            "/nonexistent/essays.json",
        ),
    ] {
        let table: toml::Table = params.parse().unwrap();
        let e = kvcat_core::task::build_task(name, &table)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains(needle), "{e}");
    }
}

#[test]
fn closed_string_params_are_enums_with_clear_errors() {
    for (params, field, allowed) in [
        ("haystack = \"novel\"", "haystack", "essay, repeat, needle"),
        ("key_type = \"emoji\"", "key_type", "words, numbers, uuids"),
        (
            "value_type = \"colours\"",
            "value_type",
            "words, numbers, uuids",
        ),
    ] {
        let table: toml::Table = params.parse().unwrap();
        let e = kvcat_core::task::build_task("niah_single", &table)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains(&format!("`{field}`")), "{e}");
        assert!(e.contains(allowed), "{e}");
    }
    // the names round-trip through the resolved parameters unchanged
    let t =
        kvcat_core::task::build_task("niah_multikey", &"haystack = \"needle\"".parse().unwrap())
            .unwrap();
    let p = t.params();
    assert_eq!(p["haystack"].as_str(), Some("needle"));
    assert_eq!(p["key_type"].as_str(), Some("words"));
    assert_eq!(p["value_type"].as_str(), Some("numbers"));
}
