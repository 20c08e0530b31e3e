//! The evaluation loop on a tiny random model: the compressor path at budget 1.0 scores
//! exactly as the uncompressed path; a real budget is achieved and changes the perplexity;
//! bad lengths are clear errors.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod tasks_support;
use kvcat_bench::evaluate::{
    check_task_fits, evaluate_budgets, evaluate_examples, prepare, CellInfo, EvalOptions,
};
use kvcat_compressors as _;
use kvcat_core::compressor::build_compressor;
use kvcat_core::task::{Context, Example, Metric};
use kvcat_core::{Budget, LlamaConfig, Model, Tokenizer};
use tasks_support::{task, tokenizer};
use tch::{Device, Kind};

fn tiny(tok: &Tokenizer, max_pos: i64) -> Model {
    tch::manual_seed(3);
    let cfg = LlamaConfig {
        vocab_size: tok.vocab_size() as i64,
        hidden_size: 48,
        intermediate_size: 96,
        head_dim: 12,
        max_position_embeddings: max_pos,
        bos_token_id: Some(0),
        ..LlamaConfig::tiny()
    };
    Model::from_config(&cfg, Device::Cpu, Kind::Float).unwrap()
}

fn ppl_examples(tok: &Tokenizer) -> Vec<Example> {
    task(
        "ppl_continuation",
        "prefix_len = 120\ncontinuation_len = 24",
    )
    .examples(tok, 2, 0)
    .unwrap()
}

#[test]
fn full_budget_through_the_compressor_equals_no_compression() {
    let tok = tokenizer();
    let model = tiny(&tok, 1024);
    let mut examples = task("passkey", "context_len = 150")
        .examples(&tok, 2, 1)
        .unwrap();
    examples.extend(
        task("mqar", "context_len = 200\nformat = \"lines\"")
            .examples(&tok, 1, 1)
            .unwrap(),
    );
    examples.extend(ppl_examples(&tok));
    let opts = EvalOptions::default();
    let prepared = prepare(&model, &tok, &examples, &opts).unwrap();
    let base = evaluate_examples(&model, &tok, &prepared, None, Budget::full(), &opts).unwrap();
    for name in ["knorm", "snapkv"] {
        let Ok(c) = build_compressor(name, &toml::Table::new()) else {
            assert_ne!(name, "knorm", "knorm must be registered");
            continue;
        };
        for qa in [false, true] {
            let opts = EvalOptions {
                query_aware: qa,
                ..EvalOptions::default()
            };
            let r = evaluate_examples(
                &model,
                &tok,
                &prepared,
                Some(c.as_ref()),
                Budget::full(),
                &opts,
            )
            .unwrap();
            assert_eq!(r.budget_achieved, 1.0, "{name}");
            assert_eq!(r.kv_bytes, base.kv_bytes, "{name}");
            for (a, b) in r.predictions.iter().zip(&base.predictions) {
                assert_eq!(a.text, b.text, "{name}: {}", a.id);
                for ((ka, va), (kb, vb)) in a.scores.iter().zip(&b.scores) {
                    assert_eq!(ka, kb);
                    assert!((va - vb).abs() < 1e-9, "{name} {}: {ka} {va} vs {vb}", a.id);
                }
            }
            assert_eq!(r.metrics, base.metrics, "{name}");
        }
    }
    // The random model generates something, so the comparison above is not vacuous.
    assert!(base.predictions.iter().any(|p| !p.text.is_empty()));
    let nll = base.metric("nll").unwrap();
    assert_eq!(nll.n, 2);
    assert_eq!(Some(nll.mean), base.metric("nll_full").map(|m| m.mean));
    assert!((base.metric("ppl").unwrap().mean - nll.mean.exp()).abs() < 1e-9);
}

#[test]
fn budgets_are_achieved_and_matter() {
    let tok = tokenizer();
    let model = tiny(&tok, 1024);
    let examples = ppl_examples(&tok);
    let opts = EvalOptions::default();
    let prepared = prepare(&model, &tok, &examples, &opts).unwrap();
    let c = build_compressor("knorm", &toml::Table::new()).unwrap();
    let budgets = [
        Budget::full(),
        Budget::fraction(0.5).unwrap(),
        Budget::Slots(16),
    ];
    let rs = evaluate_budgets(&model, &tok, &prepared, Some(c.as_ref()), &budgets, &opts).unwrap();
    assert_eq!(rs.len(), 3);
    // Context = BOS + 120 tokens.
    assert!(
        (rs[1].budget_achieved - 60.0 / 121.0).abs() < 1e-9,
        "{}",
        rs[1].budget_achieved
    );
    assert!((rs[2].budget_achieved - 16.0 / 121.0).abs() < 1e-9);
    assert!(rs[1].kv_bytes < rs[0].kv_bytes);
    let full = rs[0].metric("nll").unwrap().mean;
    let half = rs[1].metric("nll").unwrap().mean;
    assert_eq!(rs[1].metric("nll_full").unwrap().mean, full);
    assert!(half != full, "compression changed nothing");
    let delta = rs[1].metric("nll_delta").unwrap().mean;
    assert!((delta - (half - full)).abs() < 1e-9);

    // Result rows carry the cell and one row per metric.
    let cell = CellInfo {
        task: "ppl_continuation".into(),
        compressor: "knorm".into(),
        ..Default::default()
    };
    let rows = rs[1].rows(&cell);
    let names: Vec<&str> = rows.iter().map(|r| r.metric.as_str()).collect();
    assert_eq!(names, ["nll", "ppl", "nll_full", "ppl_full", "nll_delta"]);
    assert!(rows
        .iter()
        .all(|r| r.budget == "0.5" && r.n == 2 && r.compressor == "knorm"));
}

#[test]
fn lengths_beyond_the_model_are_clear_errors() {
    let tok = tokenizer();
    let model = tiny(&tok, 256);
    let t = task("passkey", "context_len = 1000");
    let e = check_task_fits(t.as_ref(), &model).unwrap_err().to_string();
    assert!(
        e.contains("1000") && e.contains("256") && e.contains("max_position_embeddings"),
        "{e}"
    );
    let ex = Example {
        id: "long".into(),
        context: Context::Tokens(vec![5; 250]),
        question: "?".into(),
        answer_prefix: String::new(),
        answers: vec!["x".into()],
        metric: Metric::StringMatchAll,
        max_new_tokens: 10,
        continuation: vec![],
        depth: None,
    };
    let e = prepare(&model, &tok, &[ex], &EvalOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("`long`") && e.contains("256"), "{e}");
}

#[test]
fn chatml_wraps_text_examples_only() {
    use kvcat_bench::evaluate::apply_chat_template;
    let tok = tokenizer();
    let mut ex = task("passkey", "context_len = 200")
        .examples(&tok, 1, 0)
        .unwrap();
    ex.extend(ppl_examples(&tok));
    let before = ex.clone();
    apply_chat_template("chatml", &mut ex).unwrap();
    let Context::Text(t) = &ex[0].context else {
        panic!()
    };
    assert!(t.starts_with("<|im_start|>user\nThere is an important info"));
    assert_eq!(
        ex[0].question,
        "\nWhat is the pass key?<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(ex[0].answer_prefix, "The pass key is");
    assert_eq!(ex[1], before[1], "token contexts are unchanged");
    let e = apply_chat_template("llama3", &mut ex)
        .unwrap_err()
        .to_string();
    assert!(e.contains("chatml"), "{e}");
}
