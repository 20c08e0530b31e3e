//! kvpress 0.5.5 parity: on tiny random-init HF Llama checkpoints (GQA and MHA), kvcat's
//! eviction compressors (and the `pyramid`, `adakv` wrappers, and `kvzip`) keep the same positions as kvpress (≤ 2% disagreement, for ties) and
//! the continuation logits decoded after compression match kvpress + transformers within 1e-3.
//!
//! Fixtures come from `tools/fixtures/make_kvpress_fixtures.py`.

use kvcat_compressors as _;
use kvcat_core::compressor::build_compressor;
use kvcat_core::{probe, Budget, CompressionInput, Model};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// kvcat names; `pyramid` and `adakv` wrap their default inner scorer, SnapKV, as kvpress's
/// `PyramidKVPress` and `AdaKVPress(SnapKVPress())` do.
const PRESSES: [&str; 10] = [
    "streaming_llm",
    "knorm",
    "snapkv",
    "tova",
    "observed_attention",
    "expected_attention",
    "keydiff",
    "pyramid",
    "adakv",
    "kvzip",
];
const BUDGETS: [f64; 3] = [0.75, 0.5, 0.25];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/kvpress")
        .join(name)
}

#[derive(serde::Deserialize)]
struct Ids {
    context: Vec<i64>,
    continuation: Vec<i64>,
}

fn check_model(name: &str) {
    let dir = fixture(name);
    let model = Model::load(&dir, Device::Cpu, Kind::Float).expect("load fixture model");
    let ids: Ids = serde_json::from_str(
        &std::fs::read_to_string(dir.join("ids.json")).expect("read ids.json"),
    )
    .expect("parse ids.json");
    let expected: HashMap<String, Tensor> =
        Tensor::read_safetensors(dir.join("expected.safetensors"))
            .expect("read expected.safetensors")
            .into_iter()
            .collect();
    let context = Tensor::from_slice(&ids.context).view([1, -1]);
    let continuation = Tensor::from_slice(&ids.continuation).view([1, -1]);
    let _g = tch::no_grad_guard();
    let (cache, hidden) = probe::prefill_for_compression(&model, &context).expect("prefill");

    let mut full = cache.copy();
    let logits = model.forward(&continuation, &mut full).expect("decode");
    let diff = (logits.get(0) - &expected["none.continuation_logits"])
        .abs()
        .max()
        .double_value(&[]);
    assert!(diff < 1e-3, "{name}: uncompressed logits differ by {diff}");

    let mut report = vec![];
    for press in PRESSES {
        let mut params = toml::Table::new();
        if press == "kvzip" {
            // kvpress tokenizes its repeat prompt (+ chat suffix); kvcat takes the ids.
            let ids = Vec::<i64>::try_from(&expected["kvzip.instruction_ids"]).expect("ids");
            let ids: Vec<toml::Value> = ids.into_iter().map(toml::Value::from).collect();
            params.insert("instruction_ids".into(), ids.into());
        }
        let comp = build_compressor(press, &params).expect("build");
        for b in BUDGETS {
            let key = format!("{press}@{b}");
            let input = CompressionInput {
                model: &model,
                cache: &cache,
                context: &context,
                hidden: &hidden,
                question: None,
                budget: Budget::fraction(b).expect("budget"),
                seed: 0,
            };
            let out = comp.compress(&input).expect("compress").cache;
            let (mut missed, mut total) = (0usize, 0usize);
            for (i, layer) in out.layers.iter().enumerate() {
                let want = &expected[&format!("{key}.layer.{i}.kept_positions")];
                let got = layer.kept_positions(0);
                assert_eq!(got.len() as i64, want.size()[0], "{name} {key}: heads");
                for (h, g) in got.iter().enumerate() {
                    let g: BTreeSet<i64> =
                        Vec::<i64>::try_from(g).expect("ids").into_iter().collect();
                    let w: BTreeSet<i64> = Vec::<i64>::try_from(want.get(h as i64))
                        .expect("ids")
                        .into_iter()
                        .filter(|&p| p >= 0) // -1 pads heads that keep fewer slots
                        .collect();
                    assert_eq!(
                        g.len(),
                        w.len(),
                        "{name} {key} layer {i} head {h}: kept count"
                    );
                    missed += w.difference(&g).count();
                    total += w.len();
                }
            }
            let disagreement = missed as f64 / total as f64;
            let mut dec = out;
            let logits = model.forward(&continuation, &mut dec).expect("decode");
            let ldiff = (logits.get(0) - &expected[&format!("{key}.continuation_logits")])
                .abs()
                .max()
                .double_value(&[]);
            report.push(format!(
                "{name} {key}: disagreement {:.4}, max logit diff {ldiff:.2e}",
                disagreement
            ));
            assert!(
                disagreement <= 0.02,
                "{}",
                report.last().expect("just pushed")
            );
            // Logits can only match when the kept sets do.
            if missed == 0 {
                assert!(ldiff < 1e-3, "{}", report.last().expect("just pushed"));
            }
        }
    }
    eprintln!("{}", report.join("\n"));
}

#[test]
fn eviction_matches_kvpress_gqa() {
    check_model("gqa");
}

#[test]
fn eviction_matches_kvpress_mha() {
    check_model("mha");
}
