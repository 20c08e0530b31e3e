//! The research instruments in a manifest, on real pieces: the `gist` policy trained and
//! evaluated by its own compressor (crossed only with its checkpoint), compression during
//! generation (`compress_every`), and the `[analyze]` profile of every checkpoint against
//! `none`; plus the manifest errors for each.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use kvcat_compressors as _;
use kvcat_policies as _;

mod runner_support;
use kvcat_bench::runner::kvcat_executor::KvcatExecutor;
use kvcat_bench::runner::manifest::Manifest;
use kvcat_bench::runner::store::recover;
use kvcat_bench::runner::{run_bench, Grid};
use runner_support::{options, play_corpus, temp_dir};
use std::path::Path;

const MANIFEST: &str = r#"name = "instruments"
seed = 0
device = "cpu"
dtype = "f32"
budgets = [0.5, 1.0]

[[model]]
name = "micro"

[model.pretrain]
steps = 4
batch_size = 4
seq_len = 64
data = { corpora = ["CORPUS"] }
loss = { w_mask = 0.0, w_full = 1.0 }
eval = { sequences = 4 }
split = { min_prefix = 16, max_prefix = 48 }

[model.pretrain.model]
tokenizer = { max_chars = 100000 }

[model.pretrain.model.config]
vocab_size = 384
hidden_size = 32
intermediate_size = 64
num_hidden_layers = 2
num_attention_heads = 2
num_key_value_heads = 1
head_dim = 16
max_position_embeddings = 256
tie_word_embeddings = true

[train]
steps = 3
batch_size = 4
seq_len = 64
data = { corpora = ["CORPUS"] }
eval = { sequences = 4 }
split = { min_prefix = 16, max_prefix = 48 }

[[policy]]
name = "none"

[[policy]]
name = "gist"
params = { chunk_len = 8, max_per_chunk = 4 }

[[compressor]]
name = "streaming_llm"
params = { n_sink = 2 }

[[compressor]]
name = "gist"
policies = ["gist"]

[[task]]
name = "mqar"
n = 2
compress_every = 1
params = { context_len = 96, num_queries = 2, format = "lines" }

[[task]]
name = "ppl_continuation"
n = 2
params = { source = "CORPUS", prefix_len = 48, continuation_len = 16 }

[analyze]
task = "ppl_continuation"
n = 2
budgets = [0.25, 0.5]
compressors = ["streaming_llm"]
"#;

fn text(root: &Path) -> String {
    let corpus = play_corpus(root);
    MANIFEST.replace("CORPUS", &corpus.display().to_string())
}

#[test]
fn gist_compress_every_and_analyze_run_in_a_manifest() {
    let root = temp_dir("instruments");
    let m = Manifest::parse(&text(&root), "instruments.toml").unwrap();
    // `gist` is crossed with the gist checkpoint only: per task, none 1 + 1, gist 1 + 2.
    assert_eq!(Grid::expand(&m).unwrap().cells.len(), 2 * (2 + 3));

    let out = root.join("run");
    let mut exec = KvcatExecutor::new(&m).unwrap();
    let s = run_bench(&m, &options(&out), &mut exec).unwrap();
    // gist summarises an uncompressed prefill only, so compressing again during generation
    // is refused, with an error that says where
    assert_eq!(s.failed.len(), 1, "{:?}", s.failed);
    let (_, err) = &s.failed[0];
    assert!(
        err.contains("mqar gist") && err.contains("during generation"),
        "{err}"
    );
    let rows = recover(&out).unwrap().rows();
    let gist_ppl = rows
        .iter()
        .find(|r| r.policy == "gist" && r.compressor == "gist" && r.metric == "nll")
        .expect("gist@gist perplexity row");
    assert!(gist_ppl.value.is_finite());
    // summary slots count as kept: 0.5 × 48 prefix slots (plus BOS) per head
    assert!(
        (gist_ppl.budget_achieved - 0.5).abs() < 0.03,
        "{}",
        gist_ppl.budget_achieved
    );
    let ran = rows
        .iter()
        .filter(|r| r.task == "mqar" && r.compressor == "streaming_llm")
        .find(|r| r.metric == "decode_compressions")
        .expect("decode_compressions row");
    assert!(
        ran.value >= 1.0,
        "compressions during generation: {}",
        ran.value
    );

    let dir = out.join("analyze").join("micro");
    for sub in ["none", "gist", "gist-vs-none"] {
        assert!(dir.join(sub).join("profile.csv").exists(), "{sub}");
    }
    let compare = std::fs::read_to_string(dir.join("gist-vs-none").join("compare.csv")).unwrap();
    assert!(compare.contains("micro/gist - micro/none"), "{compare}");
    assert!(compare.contains("streaming_llm") && compare.contains("oracle"));

    // a second run redoes nothing
    let again = run_bench(&m, &options(&out), &mut exec).unwrap();
    assert_eq!(again.analyzed, 0);
}

#[test]
fn manifest_errors_name_the_field_and_the_allowed_values() {
    let root = temp_dir("instruments-errors");
    let good = text(&root);
    let cases = [
        (
            r#"policies = ["gist"]"#,
            r#"policies = ["gsit"]"#,
            "compressor[1].policies",
            "gist, none",
        ),
        (
            "compress_every = 1",
            "compress_every = 0",
            "task[0].compress_every",
            "at least 1",
        ),
        (
            "task = \"ppl_continuation\"\nn = 2",
            "task = \"passkey\"\nn = 2",
            "analyze.task",
            "mqar, ppl_continuation",
        ),
        (
            r#"compressors = ["streaming_llm"]"#,
            r#"compressors = ["knorm"]"#,
            "analyze.compressors",
            "streaming_llm, gist",
        ),
    ];
    for (from, to, field, allowed) in cases {
        assert!(good.contains(from), "{from}");
        let e = Manifest::parse(&good.replacen(from, to, 1), "m.toml")
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains(field) && e.contains(allowed) && e.contains("m.toml:"),
            "{e}"
        );
    }
}
