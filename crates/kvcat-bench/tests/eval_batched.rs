//! Batched evaluation equals batch size 1: on a tiny random model, over retrieval and
//! perplexity tasks whose contexts differ in length, with uniform, per-layer (`pyramid`),
//! per-head (`adakv`) and fitted (`attention_matching`, per-slot bias) compressors. Also the
//! answer log-likelihood metric against a plain forward pass over the whole sequence.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod tasks_support;
use kvcat_bench::evaluate::{
    answer_text, evaluate_budgets, prepare, EvalOptions, EvalResult, Prepared,
};
use kvcat_compressors as _;
use kvcat_core::compressor::build_compressor;
use kvcat_core::task::{Context, Example, Metric};
use kvcat_core::{Budget, KvCache, LlamaConfig, Model, Tokenizer};
use tasks_support::{task, tokenizer};
use tch::{Device, Kind, Tensor};

fn tiny(tok: &Tokenizer) -> Model {
    tch::manual_seed(5);
    let cfg = LlamaConfig {
        vocab_size: tok.vocab_size() as i64,
        hidden_size: 48,
        intermediate_size: 96,
        num_hidden_layers: 3,
        head_dim: 12,
        max_position_embeddings: 1024,
        bos_token_id: Some(0),
        ..LlamaConfig::tiny()
    };
    Model::from_config(&cfg, Device::Cpu, Kind::Float).unwrap()
}

/// Generation and perplexity examples interleaved, with contexts of different lengths.
fn examples(tok: &Tokenizer) -> Vec<Example> {
    let mut out = task("passkey", "context_len = 150")
        .examples(tok, 2, 1)
        .unwrap();
    out.extend(
        task("mqar", "context_len = 130")
            .examples(tok, 2, 2)
            .unwrap(),
    );
    out.extend(
        task("ppl_continuation", "prefix_len = 70\ncontinuation_len = 12")
            .examples(tok, 2, 0)
            .unwrap(),
    );
    out.extend(
        task("niah_single", "context_len = 180")
            .examples(tok, 2, 3)
            .unwrap(),
    );
    for e in out.iter_mut() {
        e.max_new_tokens = e.max_new_tokens.min(6);
    }
    out
}

fn run(
    model: &Model,
    tok: &Tokenizer,
    prepared: &[Prepared],
    compressor: &str,
    batch_size: usize,
) -> Vec<EvalResult> {
    let opts = EvalOptions {
        batch_size,
        ..EvalOptions::default()
    };
    // Small observation windows so that low budgets fit these short contexts.
    let params = match compressor {
        "snapkv" => "window_size = 8",
        "adakv" => "inner_params = { window_size = 8 }",
        "pyramid" => "window_size = 8\ninner_params = { window_size = 8 }",
        "attention_matching" => "nnls = \"projected_gradient\"\nmax_queries = 32",
        _ => "",
    };
    let c = (compressor != "none")
        .then(|| build_compressor(compressor, &params.parse().unwrap()).unwrap());
    let budgets = [
        Budget::fraction(0.3).unwrap(),
        Budget::fraction(0.6).unwrap(),
    ];
    evaluate_budgets(model, tok, prepared, c.as_deref(), &budgets, &opts).unwrap()
}

fn assert_same(a: &EvalResult, b: &EvalResult, what: &str) {
    assert_eq!(a.predictions.len(), b.predictions.len(), "{what}");
    for (x, y) in a.predictions.iter().zip(&b.predictions) {
        assert_eq!(x.id, y.id, "{what}");
        assert_eq!(x.text, y.text, "{what}: {}", x.id);
        assert_eq!(x.scores.len(), y.scores.len(), "{what}: {}", x.id);
        for ((n1, v1), (n2, v2)) in x.scores.iter().zip(&y.scores) {
            assert_eq!(n1, n2, "{what}");
            let tol = 1e-4 * (1.0 + v1.abs());
            assert!(
                (v1 - v2).abs() <= tol,
                "{what}: {} {n1}: {v1} vs {v2}",
                x.id
            );
        }
    }
    assert!(
        (a.budget_achieved - b.budget_achieved).abs() < 1e-12,
        "{what}"
    );
    assert_eq!(a.kv_bytes, b.kv_bytes, "{what}");
    assert_eq!(a.metrics.len(), b.metrics.len(), "{what}");
}

#[test]
fn batched_evaluation_equals_batch_size_one() {
    let tok = tokenizer();
    let model = tiny(&tok);
    let examples = examples(&tok);
    let prepared = prepare(&model, &tok, &examples, &EvalOptions::default()).unwrap();
    let lens: Vec<i64> = prepared.iter().map(|p| p.context.size()[1]).collect();
    assert!(
        lens.iter().any(|&l| l != lens[0]),
        "contexts must differ: {lens:?}"
    );
    for name in ["none", "snapkv", "adakv", "pyramid", "attention_matching"] {
        let one = run(&model, &tok, &prepared, name, 1);
        // Batches of 3 over 8 interleaved examples: full and partial batches, split where
        // the example kind changes.
        let many = run(&model, &tok, &prepared, name, 3);
        assert_eq!(one.len(), many.len());
        for (a, b) in one.iter().zip(&many) {
            assert_same(a, b, &format!("{name} batch 3 budget {:?}", a.budget));
        }
        // The metrics of both kinds are present.
        let r = &one[0];
        for m in [
            "string_match_all",
            "answer_nll",
            "answer_logprob",
            "nll",
            "nll_delta",
        ] {
            assert!(r.metric(m).is_some(), "{name}: no `{m}` in {:?}", r.metrics);
        }
        if name == "adakv" {
            // Heads keep different counts: the bytes held include the padding slots.
            assert!(one[0].budget_achieved < 0.5, "{}", one[0].budget_achieved);
        }
    }
}

#[test]
fn zero_batch_size_is_a_clear_error() {
    let tok = tokenizer();
    let model = tiny(&tok);
    let prepared = prepare(&model, &tok, &examples(&tok)[..1], &EvalOptions::default()).unwrap();
    let opts = EvalOptions {
        batch_size: 0,
        ..EvalOptions::default()
    };
    let err = evaluate_budgets(&model, &tok, &prepared, None, &[Budget::full()], &opts)
        .unwrap_err()
        .to_string();
    assert!(err.contains("batch_size"), "{err}");
}

#[test]
fn answer_text_follows_the_training_text_rule() {
    let tok = tokenizer();
    let mut e = Example {
        id: "x".into(),
        context: Context::Text("a: 7\nb: 3\n".into()),
        question: "a:".into(),
        answer_prefix: String::new(),
        answers: vec!["7".into()],
        metric: Metric::StringMatchAll,
        max_new_tokens: 2,
        continuation: vec![],
        depth: None,
    };
    // `a:` then ` 7`, as the context writes it.
    assert_eq!(answer_text(&e).unwrap(), " 7");
    e.question = "a:\n".into();
    assert_eq!(answer_text(&e).unwrap(), "7");
    e.answer_prefix = " The pass key is".into();
    assert_eq!(answer_text(&e).unwrap(), " 7");
    let training = e.training_text(&tok).unwrap();
    assert!(training.ends_with(&format!("{}{}", e.answer_prefix, answer_text(&e).unwrap())));
    e.answers = vec![];
    assert!(answer_text(&e).is_none());
}

/// The uncompressed `answer_nll` equals the NLL of the answer tokens in one forward pass over
/// `context ++ prompt ++ answer`.
#[test]
fn answer_nll_equals_a_plain_forward_pass() {
    let tok = tokenizer();
    let model = tiny(&tok);
    let examples = task("passkey", "context_len = 150")
        .examples(&tok, 3, 4)
        .unwrap();
    let opts = EvalOptions::default();
    let prepared = prepare(&model, &tok, &examples, &opts).unwrap();
    let r = evaluate_budgets(&model, &tok, &prepared, None, &[Budget::full()], &opts).unwrap();
    for (p, pred) in prepared.iter().zip(&r[0].predictions) {
        let answer = p.answer.as_ref().expect("passkey has an answer");
        let ids = Tensor::cat(&[&p.context, &p.prompt, answer], 1);
        let _g = tch::no_grad_guard();
        let logits = model.forward(&ids, &mut KvCache::new()).unwrap();
        let (t, a) = (ids.size()[1], answer.size()[1]);
        let logp = logits
            .narrow(1, t - a - 1, a)
            .log_softmax(-1, Kind::Float)
            .gather(-1, &answer.unsqueeze(-1), false);
        let want = -logp.sum(Kind::Double).double_value(&[]) / a as f64;
        let got = pred
            .scores
            .iter()
            .find(|(n, _)| n == "answer_nll")
            .unwrap()
            .1;
        assert!((got - want).abs() < 1e-4, "{}: {got} vs {want}", p.id);
        assert!(got > 0.0);
        // The answer's first token carries the space of " The pass key is 123…".
        let first = tok.decode(&[answer.int64_value(&[0, 0])]).unwrap();
        assert!(first.starts_with(' '), "{first:?}");
    }
}
