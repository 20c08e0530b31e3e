//! `qa_squad` and `qa_hotpot`: every example contains its gold paragraph(s), is sized within
//! ±5%, deterministic; the gold position follows `depth`; a missing file is a clear error.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod tasks_support;
use kvcat_bench::tasks::qa;
use kvcat_core::task::Task;
use tasks_support::{context_text, tokenizer};

fn table(s: &str) -> toml::Table {
    s.parse().unwrap()
}

#[test]
fn gold_paragraphs_in_sized_contexts() {
    let tok = tokenizer();
    for (name, task) in [
        ("squad", qa::squad(&table("context_len = 1500")).unwrap()),
        ("hotpot", qa::hotpot(&table("context_len = 1500")).unwrap()),
    ] {
        let a = task.examples(&tok, 4, 3).unwrap();
        assert_eq!(a, task.examples(&tok, 4, 3).unwrap(), "{name}");
        for e in &a {
            let text = context_text(e);
            let n = tok.encode(text).unwrap().len();
            assert!((n as f64 - 1500.0).abs() <= 75.0, "{name}: {n} tokens");
            let gold = task.gold_paragraphs(&e.id);
            assert!(!gold.is_empty());
            for g in gold {
                assert!(text.contains(g), "{name} {}: gold paragraph missing", e.id);
            }
            assert!(
                text.matches("Document ").count() >= 2,
                "{name}: no distractors"
            );
            assert!(e.question.contains("Question: "));
            assert_eq!(e.metric, kvcat_core::task::Metric::StringMatchPart);
        }
    }
}

#[test]
fn gold_position_follows_depth() {
    let tok = tokenizer();
    for depth in [0.0, 1.0] {
        let t = qa::squad(&table(&format!("context_len = 1200\ndepth = {depth}"))).unwrap();
        for e in t.examples(&tok, 2, 1).unwrap() {
            let text = context_text(&e);
            let gold = t.gold_paragraphs(&e.id)[0];
            // The first piece is the instruction prefix.
            let docs: Vec<&str> = text.split("\n\nDocument ").skip(1).collect();
            let at = docs.iter().position(|d| d.contains(gold)).unwrap();
            let want = if depth == 0.0 { 0 } else { docs.len() - 1 };
            assert_eq!(at, want, "depth {depth}");
            assert_eq!(e.depth, Some(depth));
        }
    }
}

#[test]
fn missing_file_is_a_clear_error() {
    let e = qa::hotpot(&table("path = \"/no/such/hotpot.json\""))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("/no/such/hotpot.json") && e.contains("not found"),
        "{e}"
    );
    let e = qa::squad(&table("depth = -1.0")).err().unwrap().to_string();
    assert!(e.contains("depth"), "{e}");
}
