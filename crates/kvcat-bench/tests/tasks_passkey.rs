//! `passkey`: determinism, length within ±5%, needle depth, training text, bad parameters.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod tasks_support;
use kvcat_bench as _;
use tasks_support::{context_text, task, tokenizer};

#[test]
fn registered() {
    let all = kvcat_core::registry::all::<kvcat_core::task::TaskDescriptor>().unwrap();
    assert!(all.contains_key("passkey"), "{:?}", all.keys());
}

#[test]
fn deterministic_and_sized() {
    let tok = tokenizer();
    for len in [128usize, 500, 2000] {
        let t = task("passkey", &format!("context_len = {len}"));
        let a = t.examples(&tok, 4, 7).unwrap();
        let b = t.examples(&tok, 4, 7).unwrap();
        assert_eq!(a, b, "same seed, same examples");
        let c = t.examples(&tok, 4, 8).unwrap();
        assert_ne!(a[0].answers, c[0].answers, "another seed draws another key");
        for e in &a {
            let n = tok.encode(context_text(e)).unwrap().len();
            let rel = (n as f64 - len as f64).abs() / len as f64;
            assert!(rel <= 0.05, "{len}: context has {n} tokens");
            let key = &e.answers[0];
            assert_eq!(key.len(), 5);
            assert_eq!(context_text(e).matches(key.as_str()).count(), 2);
        }
        // The first examples do not depend on how many are drawn.
        assert_eq!(t.examples(&tok, 2, 7).unwrap()[..], a[..2]);
    }
}

#[test]
fn needle_at_requested_depth() {
    let tok = tokenizer();
    let prefix_end = "quiz you about the important information there.\n";
    for depth in [0.0, 0.25, 0.5, 0.9, 1.0] {
        let t = task("passkey", &format!("context_len = 1000\ndepth = {depth}"));
        let e = &t.examples(&tok, 1, 3).unwrap()[0];
        let text = context_text(e);
        let hay_start = text.find(prefix_end).unwrap() + prefix_end.len();
        let needle = text.find("The pass key is").unwrap();
        let needle_end = text.find("is the pass key.").unwrap() + "is the pass key.".len();
        let before = tok.encode(&text[hay_start..needle]).unwrap().len() as f64;
        let after = tok.encode(&text[needle_end..]).unwrap().len() as f64;
        let measured = before / (before + after);
        assert!(
            (measured - depth).abs() < 0.03,
            "depth {depth}: needle at {measured:.3} of the haystack"
        );
        assert!((e.depth.unwrap() - depth).abs() < 0.03);
    }
}

#[test]
fn training_text_holds_the_answer() {
    let tok = tokenizer();
    let t = task("passkey", "context_len = 200\ndepth = 0.5");
    let texts = t.training_texts(&tok, 2, 1).unwrap();
    let ex = t.examples(&tok, 2, 1).unwrap();
    for (text, e) in texts.iter().zip(&ex) {
        assert!(
            text.ends_with(&format!("The pass key is {}", e.answers[0])),
            "{text}"
        );
    }
}

#[test]
fn bad_parameters_are_clear_errors() {
    for (params, needle) in [
        ("depth = 1.5", "depth"),
        ("depth = -0.1", "depth"),
        ("context_len = 4", "context_len"),
        ("colour = 3", "colour"),
    ] {
        let table: toml::Table = params.parse().unwrap();
        let e = kvcat_core::task::build_task("passkey", &table)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains(needle) && e.contains("passkey"), "{e}");
    }
}
