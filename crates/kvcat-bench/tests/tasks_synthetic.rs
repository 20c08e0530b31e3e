//! `mqar` and `variable_tracking`: determinism, sizing, answers present, depth.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod tasks_support;
use kvcat_bench as _;
use tasks_support::{context_text, task, tokenizer};

fn within(n: usize, len: usize) -> bool {
    (n as f64 - len as f64).abs() <= 0.05 * len as f64
}

#[test]
fn mqar_examples() {
    let tok = tokenizer();
    for len in [128usize, 512, 1500] {
        let t = task("mqar", &format!("format = \"lines\"\ncontext_len = {len}"));
        let a = t.examples(&tok, 3, 2).unwrap();
        assert_eq!(a, t.examples(&tok, 3, 2).unwrap());
        for e in &a {
            let text = context_text(e);
            assert!(within(tok.encode(text).unwrap().len(), len), "{len}");
            // The asked key appears once in the context, with its value.
            let key = e.question.lines().last().unwrap().trim_end_matches(':');
            let line = format!("{key}: {}", e.answers[0]);
            assert_eq!(
                text.lines()
                    .filter(|l| l.starts_with(&format!("{key}:")))
                    .count(),
                1
            );
            assert!(text.lines().any(|l| l == line), "{line}");
            // Worked queries replay real pairs.
            for q in e.question.lines().filter(|l| l.contains(": ")) {
                assert!(text.lines().any(|l| l == q), "{q}");
            }
        }
    }
    let e = &task("mqar", "format = \"lines\"\ncontext_len = 400\ndepth = 0.5")
        .examples(&tok, 1, 0)
        .unwrap()[0];
    assert!((e.depth.unwrap() - 0.5).abs() < 0.03);
}

/// Token-level `mqar`: every key and value is one token, the asked pair appears once, worked
/// queries replay real pairs, and the answer follows the prompt as one more token.
#[test]
fn mqar_token_format() {
    let tok = tokenizer();
    for len in [64usize, 128] {
        let t = task("mqar", &format!("context_len = {len}\nnum_queries = 3"));
        let a = t.examples(&tok, 4, 2).unwrap();
        assert_eq!(a, t.examples(&tok, 4, 2).unwrap());
        for e in &a {
            let text = context_text(e);
            assert!(within(tok.encode(text).unwrap().len(), len), "{len}");
            let lines: Vec<&str> = text.lines().collect();
            for l in &lines {
                let words: Vec<&str> = l.split(' ').collect();
                assert_eq!(words.len(), 3, "{l:?}");
                assert_eq!(tok.encode(l).unwrap().len(), 2, "{l:?}");
            }
            let key = e.question.lines().last().unwrap();
            assert_eq!(
                lines
                    .iter()
                    .filter(|l| l.starts_with(&format!("{key} ")))
                    .count(),
                1
            );
            let answer = e.answer_continuation().unwrap();
            assert!(lines.contains(&format!("{key}{answer}").as_str()));
            assert_eq!(tok.encode(&answer).unwrap().len(), 1);
            for q in e
                .question
                .lines()
                .skip(1)
                .filter(|l| l.split(' ').count() == 3)
            {
                assert!(lines.contains(&q), "{q}");
            }
        }
    }
    // A tokenizer with too few single-token words for the length is refused with advice.
    let e = task("mqar", "context_len = 6000")
        .examples(&tok, 1, 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("single-token") && e.contains("format"), "{e}");
}

/// Training rows of `mqar` are dense and in the evaluated text: pairs, then queries that
/// replay them, exactly `seq_len` tokens, fresh per seed.
#[test]
fn mqar_training_rows() {
    let tok = tokenizer();
    let t = task("mqar", "context_len = 64");
    let a = t.training_row(&tok, 96, 5, 0).unwrap();
    assert_eq!(a.ids.len(), 96);
    assert_eq!(a, t.training_row(&tok, 96, 5, 0).unwrap());
    assert_ne!(a, t.training_row(&tok, 96, 6, 0).unwrap());
    let text = tok.decode(&a.ids).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // Every complete line after the first occurrence of its key repeats the same value.
    let mut seen = std::collections::HashMap::new();
    let mut repeats = 0;
    for l in &lines[..lines.len() - 1] {
        let (k, v) = l.rsplit_once(' ').unwrap();
        match seen.insert(k.to_string(), v.to_string()) {
            Some(old) => {
                assert_eq!(old, v, "{l}");
                repeats += 1;
            }
            None => {}
        }
    }
    assert!(repeats >= 8, "only {repeats} query lines in {text:?}");
    // `min_train_pairs` ≤ distinct keys ≤ `max_train_pairs` in every row
    let capped = task(
        "mqar",
        "context_len = 64\nmin_train_pairs = 2\nmax_train_pairs = 3",
    );
    for seed in 0..20 {
        let row = capped.training_row(&tok, 96, seed, 0).unwrap();
        let text = tok.decode(&row.ids).unwrap();
        let keys: std::collections::HashSet<&str> = text
            .lines()
            .filter_map(|l| l.rsplit_once(' ').map(|(k, _)| k))
            .collect();
        assert!(
            (2..=3).contains(&keys.len()),
            "{} keys in {text:?}",
            keys.len()
        );
    }
}

#[test]
fn variable_tracking_examples() {
    let tok = tokenizer();
    for (len, chains, hops) in [(300usize, 1usize, 4usize), (1000, 2, 3)] {
        let t = task(
            "variable_tracking",
            &format!("context_len = {len}\nnum_chains = {chains}\nnum_hops = {hops}"),
        );
        let a = t.examples(&tok, 2, 9).unwrap();
        assert_eq!(a, t.examples(&tok, 2, 9).unwrap());
        for e in &a {
            let text = context_text(e);
            assert!(within(tok.encode(text).unwrap().len(), len), "{len}");
            assert_eq!(e.answers.len(), hops + 1);
            assert_eq!(text.matches("VAR ").count(), chains * (2 * hops + 1));
            // The chain is in order: each variable is assigned after the previous one.
            let value = e
                .question
                .split("value ")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap();
            let mut at = text
                .find(&format!("VAR {} = {value}.", e.answers[0]))
                .unwrap();
            for w in e.answers.windows(2) {
                let next = text.find(&format!("VAR {} = VAR {}.", w[1], w[0])).unwrap();
                assert!(next > at);
                at = next;
            }
        }
    }
}

#[test]
fn bad_parameters() {
    for (name, params) in [
        ("mqar", "depth = 1.01"),
        ("mqar", "key_len = 0"),
        ("variable_tracking", "num_hops = 0"),
        ("variable_tracking", "depth = 0.5"),
    ] {
        let table: toml::Table = params.parse().unwrap();
        let e = kvcat_core::task::build_task(name, &table)
            .err()
            .unwrap()
            .to_string();
        let field = params.split(' ').next().unwrap();
        assert!(e.contains(field) && e.contains(name), "{e}");
    }
}
