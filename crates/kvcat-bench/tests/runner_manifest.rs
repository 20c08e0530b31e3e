//! Manifest parsing: the mini manifest resolves; bad manifests fail with `file:line:column`,
//! the field, and the known names.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use kvcat_compressors as _;
use kvcat_policies as _;

mod runner_support;
use kvcat_bench::runner::manifest::Manifest;
use kvcat_core::budget::Budget;
use runner_support::MINI;

/// 1-based line and column of the first occurrence of `needle` in `text`.
fn pos(text: &str, needle: &str) -> (usize, usize) {
    let off = text
        .find(needle)
        .unwrap_or_else(|| panic!("`{needle}` not in text"));
    kvcat_bench::runner::manifest::line_col(text, off)
}

fn err(text: &str) -> String {
    Manifest::parse(text, "m.toml")
        .expect_err("should fail")
        .to_string()
}

#[test]
fn mini_manifest_resolves_defaults() {
    let m = Manifest::parse(MINI, "mini.toml").unwrap();
    assert_eq!(m.name, "mini");
    assert_eq!(
        m.budgets,
        vec![
            Budget::Fraction(0.25),
            Budget::Fraction(0.5),
            Budget::Fraction(1.0)
        ]
    );
    assert_eq!(m.compressed_budgets().len(), 2);
    assert_eq!(
        m.policy.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        ["none", "rand"]
    );
    // Resolved params: the defaults of each plugin are filled in.
    let sl =
        kvcat_core::compressor::build_compressor("streaming_llm", &toml::Table::new()).unwrap();
    assert_eq!(m.compressor[0].params, sl.params());
    assert_eq!(
        m.task[0]
            .params
            .get("context_len")
            .and_then(|v| v.as_integer()),
        Some(128)
    );
    assert!(
        m.task[0].params.contains_key("digits"),
        "passkey defaults filled: {:?}",
        m.task[0].params
    );
    assert_eq!(m.task[0].seed, 1, "task seed defaults to the manifest seed");
    // The saved form reads back identically, and the run id is stable.
    let text = m.to_toml().unwrap();
    let dir = runner_support::temp_dir("manifest-roundtrip");
    std::fs::write(dir.join("manifest.toml"), &text).unwrap();
    let back = Manifest::read_resolved(&dir.join("manifest.toml")).unwrap();
    assert_eq!(back, m);
    assert_eq!(back.run_id().unwrap(), m.run_id().unwrap());
}

#[test]
fn duplicate_budgets_collapse_and_slot_budgets_parse() {
    let text = MINI.replace(
        "budgets = [0.25, 0.5, 1.0]",
        "budgets = [0.5, \"50%\", 64, \"32slots\"]",
    );
    let m = Manifest::parse(&text, "m.toml").unwrap();
    assert_eq!(
        m.budgets,
        vec![Budget::Fraction(0.5), Budget::Slots(64), Budget::Slots(32)]
    );
}

#[test]
fn unknown_compressor_names_line_column_and_known_names() {
    let text = MINI.replace("name = \"knorm\"", "name = \"knorrm\"");
    let e = err(&text);
    let (l, c) = pos(&text, "\"knorrm\"");
    assert!(e.starts_with(&format!("m.toml:{l}:{c}:")), "{e}");
    assert!(e.contains("compressor[1].name"), "{e}");
    assert!(e.contains("unknown compressor `knorrm`"), "{e}");
    for known in ["knorm", "snapkv", "streaming_llm"] {
        assert!(e.contains(known), "known names listed: {e}");
    }
}

#[test]
fn unknown_policy_and_task_list_known_names() {
    let text = MINI.replace("name = \"rand\"", "name = \"random_mask\"");
    let e = err(&text);
    let (l, c) = pos(&text, "\"random_mask\"");
    assert!(e.starts_with(&format!("m.toml:{l}:{c}:")), "{e}");
    assert!(
        e.contains("unknown policy `random_mask`") && e.contains("rand") && e.contains("attn"),
        "{e}"
    );

    let text = MINI.replace("name = \"passkey\"", "name = \"passkee\"");
    let e = err(&text);
    let (l, c) = pos(&text, "\"passkee\"");
    assert!(e.starts_with(&format!("m.toml:{l}:{c}:")), "{e}");
    assert!(
        e.contains("unknown task `passkee`") && e.contains("passkey"),
        "{e}"
    );
}

#[test]
fn bad_plugin_params_point_at_the_params_table() {
    let text = MINI.replace(
        "name = \"knorm\"",
        "name = \"knorm\"\nparams = { not_a_param = 3 }",
    );
    let e = err(&text);
    let (l, _) = pos(&text, "params = { not_a_param");
    assert!(e.starts_with(&format!("m.toml:{l}:")), "{e}");
    assert!(e.contains("knorm") && e.contains("not_a_param"), "{e}");

    let text = MINI.replace(
        "params = { context_len = 128 }",
        "params = { context_len = 128, depth = 1.5 }",
    );
    let e = err(&text);
    assert!(e.contains("passkey") && e.contains("depth"), "{e}");
}

#[test]
fn bad_budgets_point_at_the_value() {
    for bad in ["1.5", "0", "-0.25", "\"lots\""] {
        let text = MINI.replace(
            "budgets = [0.25, 0.5, 1.0]",
            &format!("budgets = [0.25, {bad}]"),
        );
        let e = err(&text);
        let (l, c) = pos(&text, &format!("{bad}]"));
        assert!(e.starts_with(&format!("m.toml:{l}:{c}:")), "{bad}: {e}");
        assert!(
            e.contains("budgets[1]") && e.contains("budget"),
            "{bad}: {e}"
        );
    }
    let e = err(&MINI.replace("budgets = [0.25, 0.5, 1.0]\n", ""));
    assert!(e.contains("budgets") && e.contains("missing"), "{e}");
}

#[test]
fn schema_and_syntax_errors_have_positions() {
    let text = MINI.replace("seed = 1\n", "seed = 1\nbudget = 0.5\n");
    let e = err(&text);
    let (l, _) = pos(&text, "budget = 0.5");
    assert!(e.starts_with(&format!("m.toml:{l}:")), "{e}");
    assert!(e.contains("unknown field `budget`"), "{e}");

    let text = MINI.replace("n = 2", "n = = 2");
    let e = err(&text);
    let (l, _) = pos(&text, "n = = 2");
    assert!(e.starts_with(&format!("m.toml:{l}:")), "{e}");
}

#[test]
fn bad_device_dtype_and_sizes() {
    let e = err(&MINI.replace("device = \"cpu\"", "device = \"tpu\""));
    assert!(
        e.starts_with("m.toml:3:10:") && e.contains("allowed: auto, cpu, cuda"),
        "{e}"
    );
    let e = err(&MINI.replace("dtype = \"f32\"", "dtype = \"f8\""));
    assert!(e.contains("dtype") && e.contains("f32, bf16, f16"), "{e}");
    let e = err(&MINI.replace("n = 2", "n = 0"));
    assert!(e.contains("task[0].n") && e.contains("at least 1"), "{e}");
    let e = err(&MINI.replace("n = 2\n", ""));
    assert!(e.contains("task[0].n") && e.contains("missing"), "{e}");
}

#[test]
fn model_sources_and_reference_compressor() {
    let e = err(&MINI.replace("base = true", "base = true\npath = \"x.gguf\""));
    assert!(e.contains("model[0]") && e.contains("not both"), "{e}");
    let e = err(&MINI.replace("name = \"knorm\"", "name = \"none\""));
    assert!(
        e.contains("compressor[1].name") && e.contains("reference"),
        "{e}"
    );
    // A model path that does not exist is caught before anything trains.
    let (a, b) = (
        MINI.find("[model.pretrain]").unwrap(),
        MINI.find("[train]").unwrap(),
    );
    let text = format!(
        "{}path = \"no/such/model.gguf\"\n\n{}",
        &MINI[..a],
        &MINI[b..]
    );
    let e = err(&text);
    let (l, c) = pos(&text, "\"no/such/model.gguf\"");
    assert!(e.starts_with(&format!("m.toml:{l}:{c}:")), "{e}");
    assert!(
        e.contains("model[0].path") && e.contains("does not exist"),
        "{e}"
    );
}

#[test]
fn bad_training_tables_name_the_job_and_field() {
    let text = MINI.replace(
        "[train]\nsteps = 2",
        "[train]\nsteps = 2\nlearning_rate = 0.1",
    );
    let e = err(&text);
    let (l, c) = pos(&text, "learning_rate");
    assert!(e.starts_with(&format!("m.toml:{l}:{c}:")), "{e}");
    assert!(
        e.contains("tiny/none") && e.contains("learning_rate"),
        "{e}"
    );
    let e = err(&MINI.replace("[train]\nsteps = 2", "[train]\nsteps = 0"));
    assert!(e.contains("steps"), "{e}");
    let e = err(&MINI.replace(
        "[train]\nsteps = 2",
        "[train]\nsteps = 2\npolicy = { name = \"attn\" }",
    ));
    assert!(e.contains("[[policy]]"), "{e}");
}

#[test]
fn bad_pretrain_table_points_at_the_model() {
    let text = MINI.replace("vocab_size = 300", "vocab_size = 10");
    let e = err(&text);
    let (l, c) = pos(&text, "vocab_size = 10");
    assert!(e.starts_with(&format!("m.toml:{l}:{c}:")), "{e}");
    assert!(
        e.contains("model[0].pretrain") && e.contains("tiny/pretrain") && e.contains("vocab_size"),
        "{e}"
    );
}

fn with_seeds(seeds: &str) -> String {
    MINI.replace(
        "budgets = [0.25, 0.5, 1.0]",
        &format!("budgets = [0.25, 0.5, 1.0]\nseeds = {seeds}"),
    )
}

#[test]
fn seeds_parse_and_round_trip_and_are_absent_by_default() {
    let m = Manifest::parse(&with_seeds("[0, 1, 2]"), "m.toml").unwrap();
    assert_eq!(m.seeds, [0, 1, 2]);
    let text = m.to_toml().unwrap();
    assert!(text.contains("seeds = [0, 1, 2]"), "{text}");
    let mini = Manifest::parse(MINI, "m.toml").unwrap();
    assert!(mini.seeds.is_empty());
    assert!(
        !mini.to_toml().unwrap().contains("seeds"),
        "manifests without seeds keep their saved form (and run ids)"
    );
}

#[test]
fn bad_seeds_name_the_field_and_point_at_the_value() {
    let text = with_seeds("[0, 1, 1]");
    let e = err(&text);
    assert!(e.contains("seeds[2]") && e.contains("listed twice"), "{e}");
    let text = with_seeds("[0, -3]");
    let e = err(&text);
    let (l, _) = pos(&text, "seeds = ");
    assert!(e.starts_with(&format!("m.toml:{l}:")), "{e}");
    assert!(e.contains("seeds[1]") && e.contains("non-negative"), "{e}");
    let e = err(&with_seeds("[]"));
    assert!(e.contains("seeds") && e.contains("is empty"), "{e}");
    let e =
        err(&with_seeds("[0, 1]").replace("[train]\nsteps = 2", "[train]\nseed = 4\nsteps = 2"));
    assert!(
        e.contains("seeds") && e.contains("must not set `seed`"),
        "{e}"
    );
    let text = with_seeds("[\"a\"]");
    let e = err(&text);
    let (l, _) = pos(&text, "seeds = ");
    assert!(e.starts_with(&format!("m.toml:{l}:")), "{e}");
}

#[test]
fn device_and_dtype_are_enums_with_located_errors() {
    use kvcat_bench::runner::runtime_spec::{DeviceSpec, DtypeSpec};
    let text = MINI.replace("dtype = \"f32\"", "dtype = \"f8\"");
    let (l, c) = pos(&text, "\"f8\"");
    assert_eq!(
        err(&text),
        format!(
            "m.toml:{l}:{c}: field `dtype`: unknown dtype `f8` (allowed: auto, f32, bf16, f16)"
        )
    );
    let text = MINI.replace("device = \"cpu\"", "device = \"cuda:x\"");
    let (l, c) = pos(&text, "\"cuda:x\"");
    assert_eq!(
        err(&text),
        format!(
            "m.toml:{l}:{c}: field `device`: unknown device `cuda:x` (allowed: auto, cpu, cuda, cuda:N)"
        )
    );
    let m = Manifest::parse(
        &MINI.replace("device = \"cpu\"", "device = \"cuda:1\""),
        "m.toml",
    )
    .unwrap();
    assert_eq!(
        (m.device, m.dtype),
        (DeviceSpec::CudaIndex(1), DtypeSpec::F32)
    );
    // The resolved manifest writes the names back as given and reads them again.
    let text = m.to_toml().unwrap();
    assert!(
        text.contains("device = \"cuda:1\"") && text.contains("dtype = \"f32\""),
        "{text}"
    );
    let again: Manifest = toml::from_str(&text).unwrap();
    assert_eq!(again, m);
    let bad = text.replace("dtype = \"f32\"", "dtype = \"f8\"");
    let e = toml::from_str::<Manifest>(&bad).unwrap_err().to_string();
    assert!(
        e.contains("unknown dtype `f8` (allowed: auto, f32, bf16, f16)"),
        "{e}"
    );
}
