//! Synthetic training rows drawn from a registered evaluation task.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod tasks_support;

use kvcat_bench::train::config::SyntheticTask;
use kvcat_bench::train::synthetic::from_task;
use kvcat_compressors as _;
use kvcat_policies as _;

fn passkey() -> SyntheticTask {
    SyntheticTask {
        name: "passkey".into(),
        params: toml::from_str("context_len = 120\ndigits = 4").unwrap(),
    }
}

#[test]
fn rows_have_the_sequence_length_are_seeded_and_hold_the_task_text() {
    let tok = tasks_support::tokenizer();
    let rows = from_task(&passkey(), &tok, 160, 6, 7).unwrap();
    assert_eq!(rows.len(), 6);
    assert!(rows.iter().all(|r| r.len() == 160));
    assert_eq!(rows, from_task(&passkey(), &tok, 160, 6, 7).unwrap());
    assert_ne!(rows, from_task(&passkey(), &tok, 160, 6, 8).unwrap());
    // Rows hold the task's own rendering, but never the examples evaluated under that seed.
    let task = kvcat_core::task::build_task("passkey", &passkey().params).unwrap();
    let decoded = tok.decode(&rows[0]).unwrap();
    assert!(decoded.contains("The pass key is"), "{decoded}");
    let evaluated = task.examples(&tok, 50, 7).unwrap();
    let all: String = rows.iter().map(|r| tok.decode(r).unwrap()).collect();
    for e in &evaluated {
        let key = &e.answers[0];
        assert!(
            !all.contains(&format!("The pass key is {key}.")),
            "evaluated key {key} leaked into training rows"
        );
    }
}

#[test]
fn an_unknown_task_names_the_field_and_the_known_tasks() {
    let tok = tasks_support::tokenizer();
    let bad = SyntheticTask {
        name: "paskey".into(),
        params: toml::Table::new(),
    };
    let e = format!("{:#}", from_task(&bad, &tok, 64, 1, 0).unwrap_err());
    assert!(
        e.contains("data.synthetic_task") && e.contains("paskey") && e.contains("mqar"),
        "{e}"
    );
}
