//! No silent acceptance in configs, and errors that name the file, the key and what is
//! allowed: arrays are never read by position where a table belongs (train config and
//! manifest), type errors inside `[model.pretrain]` or `[train]` point at the key, a missing
//! `name` is labelled with its entry, budgets `0` and registry kinds read right, and plugin
//! parameter errors name the parameter.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use kvcat_compressors as _;
use kvcat_policies as _;

mod runner_support;
use kvcat_bench::runner::manifest::{line_col, Manifest};
use kvcat_bench::train::TrainConfig;
use runner_support::MINI;

fn pos(text: &str, needle: &str) -> (usize, usize) {
    line_col(
        text,
        text.find(needle)
            .unwrap_or_else(|| panic!("`{needle}` not in text")),
    )
}

fn err(text: &str) -> String {
    Manifest::parse(text, "m.toml")
        .expect_err("should fail")
        .to_string()
}

const TRAIN: &str = r#"steps = 2
batch_size = 2
seq_len = 64
data = { corpora = ["shakespeare"] }

[model]
source = "scratch"

[model.config]
vocab_size = 300
hidden_size = 32
intermediate_size = 64
num_hidden_layers = 1
num_attention_heads = 2
num_key_value_heads = 1
head_dim = 16
"#;

#[test]
fn a_train_config_refuses_arrays_where_tables_belong() {
    TrainConfig::from_toml_str(TRAIN).unwrap();
    for (bad, key) in [
        ("optim = [0.5, 0.1, 7]", "optim"),
        ("loss = [1.0, 0.0, 1.0]", "loss"),
        ("split = [8, 32]", "split"),
        ("budget = [\"uniform\", 0.1, 0.5]", "budget"),
        ("eval = []", "eval"),
    ] {
        let text = TRAIN.replace("seq_len = 64\n", &format!("seq_len = 64\n{bad}\n"));
        let e = format!("{:#}", TrainConfig::from_toml_str(&text).unwrap_err());
        let (l, c) = pos(&text, bad);
        assert!(e.contains(&format!("line {l}, column {c}")), "{bad}: {e}");
        assert!(
            e.contains(&format!("field `{key}`")) && e.contains("expected a table"),
            "{bad}: {e}"
        );
    }
    // Nested: a table inside a table.
    let text = TRAIN.replace(
        "source = \"scratch\"\n",
        "source = \"scratch\"\ntokenizer = [2, 1000]\n",
    );
    let e = format!("{:#}", TrainConfig::from_toml_str(&text).unwrap_err());
    assert!(
        e.contains("field `model.tokenizer`") && e.contains("expected a table"),
        "{e}"
    );
}

#[test]
fn a_manifest_refuses_arrays_where_tables_belong() {
    for bad in ["optim = []", "optim = [5e-1]", "loss = [1.0]"] {
        let text = MINI.replace("[train]\nsteps = 2", &format!("[train]\nsteps = 2\n{bad}"));
        let e = err(&text);
        let (l, c) = pos(&text, bad);
        assert!(e.starts_with(&format!("m.toml:{l}:{c}:")), "{bad}: {e}");
        let key = bad.split(' ').next().unwrap();
        assert!(
            e.contains(&format!("train.{key}")) && e.contains("expected a table"),
            "{bad}: {e}"
        );
        assert!(e.contains("tiny/none"), "names the job: {e}");
    }
    // Inside a pretraining table.
    let text = MINI.replace(
        "[model.pretrain]\nsteps = 2",
        "[model.pretrain]\nsteps = 2\noptim = [0.5]",
    );
    let e = err(&text);
    let (l, c) = pos(&text, "optim = [0.5]");
    assert!(e.starts_with(&format!("m.toml:{l}:{c}:")), "{e}");
    assert!(e.contains("model[0].pretrain.optim"), "{e}");
    // Entries of the manifest itself.
    let text = MINI
        .replace("[[policy]]\nname = \"rand\"\n", "")
        .replace("[[policy]]\nname = \"none\"\n", "")
        .replace(
            "budgets = [0.25, 0.5, 1.0]\n",
            "budgets = [0.25, 0.5, 1.0]\npolicy = [[\"rand\"]]\n",
        );
    let e = err(&text);
    assert!(
        e.contains("policy[0]") && e.contains("expected a table"),
        "{e}"
    );
    let e = err(&MINI.replace("params = { context_len = 128 }", "params = [128]"));
    assert!(
        e.contains("task[0].params") && e.contains("expected a table"),
        "{e}"
    );
}

#[test]
fn type_errors_in_training_tables_point_at_the_key() {
    let text = MINI.replace("head_dim = 16", "head_dim = []");
    let e = err(&text);
    let (l, c) = pos(&text, "head_dim = []");
    assert!(e.starts_with(&format!("m.toml:{l}:{c}:")), "{e}");
    assert!(
        e.contains("model[0].pretrain.model.config.head_dim") && e.contains("sequence"),
        "{e}"
    );

    let text = MINI.replace("[train]\nsteps = 2", "[train]\nsteps = \"two\"");
    let e = err(&text);
    let (l, c) = pos(&text, "steps = \"two\"");
    assert!(e.starts_with(&format!("m.toml:{l}:{c}:")), "{e}");
    assert!(e.contains("`train.steps`"), "{e}");

    // A policy's own override is blamed, not the shared table.
    let text = MINI.replace(
        "[[policy]]\nname = \"rand\"\n",
        "[[policy]]\nname = \"rand\"\ntrain = { batch_size = 1.5 }\n",
    );
    let e = err(&text);
    let (l, _) = pos(&text, "train = { batch_size = 1.5 }");
    assert!(e.starts_with(&format!("m.toml:{l}:")), "{e}");
    assert!(
        e.contains("policy[1].train.batch_size") && e.contains("tiny/rand"),
        "{e}"
    );
}

#[test]
fn a_missing_name_is_labelled_with_its_entry() {
    let text = MINI.replace("[[policy]]\nname = \"rand\"\n", "[[policy]]\nparams = {}\n");
    let e = err(&text);
    assert!(!e.contains("(syntax)"), "{e}");
    assert!(
        e.contains("policy[1]") && e.contains("missing field `name`"),
        "{e}"
    );
}

#[test]
fn budget_zero_and_registry_kinds_read_right() {
    let e = err(&MINI.replace("budgets = [0.25, 0.5, 1.0]", "budgets = [0]"));
    assert!(!e.contains("slot count must be"), "{e}");
    assert!(
        e.contains("kept fraction in (0, 1]") && e.contains("slot count of at least 1"),
        "{e}"
    );
    let e = err(&MINI.replace("name = \"rand\"", "name = \"randd\""));
    assert!(
        e.contains("known policies:") && !e.contains("policys"),
        "{e}"
    );
    let e = err(&MINI.replace("name = \"knorm\"", "name = \"knorn\""));
    assert!(e.contains("known compressors:"), "{e}");
}

#[test]
fn plugin_parameter_errors_name_the_parameter() {
    let mut t = toml::Table::new();
    t.insert("window_size".into(), "abc".into());
    let e = kvcat_core::compressor::build_compressor("snapkv", &t)
        .err()
        .expect("bad type")
        .to_string();
    assert!(
        e.contains("snapkv") && e.contains("field `window_size`") && e.contains("abc"),
        "{e}"
    );
}
