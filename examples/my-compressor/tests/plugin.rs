//! The plugin shows up in the runner's `list` and runs in its `compress`; the runner's
//! `compress` also reproduces kvpress's kept positions for a built-in compressor.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::{Kind, Tensor};

fn runner() -> Command {
    Command::new(env!("CARGO_BIN_EXE_my-kvcat"))
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../crates/kvcat-compressors/tests/fixtures/kvpress/gqa")
}

fn read(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .expect("read safetensors")
        .into_iter()
        .collect()
}

fn compress(name: &str, budget: &str, extra: &[&str], out: &Path) -> std::process::Output {
    let f = fixture();
    runner()
        .args(["compress", "--device", "cpu", "--model"])
        .arg(&f)
        .arg("--ids-file")
        .arg(f.join("ids.json"))
        .args(["--compressor", name, "--budget", budget])
        .args(extra)
        .arg("--out")
        .arg(out)
        .output()
        .expect("run my-kvcat")
}

#[test]
fn plugin_is_listed_with_its_defaults() {
    let out = runner().arg("list").output().expect("run my-kvcat list");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .position(|l| l.trim_start().starts_with("value_norm "))
        .expect("value_norm listed");
    assert!(
        text.lines()
            .nth(line + 1)
            .is_some_and(|l| l.contains("power=1.0")),
        "{text}"
    );
    // The built-in plugins are still there.
    assert!(text.contains("snapkv") && text.contains("adakv"), "{text}");
}

/// This runner depends on kvcat-bench without default features; `cargo test -p my-compressor`
/// builds it so, while a workspace build unifies the features on. Either way `list` shows the
/// `parquet` task exactly when the linked kvcat-bench has the `parquet` feature.
#[test]
fn parquet_task_is_listed_only_with_its_feature() {
    let out = runner().arg("list").output().expect("run my-kvcat list");
    let text = String::from_utf8_lossy(&out.stdout);
    let listed = text.lines().any(|l| l.trim_start().starts_with("parquet "));
    assert_eq!(
        listed,
        kvcat_bench::tasks::user_file::PARQUET_ENABLED,
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.trim_start().starts_with("jsonl ")),
        "{text}"
    );
}

#[test]
fn plugin_runs_in_compress_and_keeps_the_largest_value_norms() {
    let dir = std::env::temp_dir().join(format!("my-compressor-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let out_file = dir.join("value_norm.safetensors");
    let out = compress("value_norm", "0.5", &[], &out_file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = read(&out_file);

    // Independent check: recompute the values with kvcat-core and take the top half by norm.
    let model = kvcat_core::Model::load(&fixture(), tch::Device::Cpu, Kind::Float).expect("load");
    let ids: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("ids.json")).expect("ids"))
            .expect("json");
    let ctx: Vec<i64> = ids["context"]
        .as_array()
        .expect("context")
        .iter()
        .map(|v| v.as_i64().expect("id"))
        .collect();
    let t = ctx.len() as i64;
    let cache =
        tch::no_grad(|| model.prefill(&Tensor::from_slice(&ctx).view([1, -1]))).expect("prefill");
    for (i, layer) in cache.layers.iter().enumerate() {
        let norms = layer.v.get(0).norm_scalaropt_dim(2, [-1], false); // [kv_heads, t]
                                                                       // Ties (a token repeated in layer 0, whose values carry no position) go to the
                                                                       // earlier slot, as in kvcat's shared top-k: a stable descending sort.
        let (_, order) = norms.sort_stable(true, -1, true);
        let want = order.narrow(-1, 0, t / 2).sort(-1, false).0;
        let kept = &got[&format!("layer.{i}.kept_positions")];
        assert!(kept.equal(&want), "layer {i}: kept positions differ");
    }
    assert_eq!(got["continuation_logits"].size()[0], 8);

    // Bad parameters are reported, naming the plugin.
    let bad = compress("value_norm", "0.5", &["--set", "power=0"], &out_file);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("value_norm"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn runner_compress_matches_kvpress_for_builtin_snapkv() {
    let dir = std::env::temp_dir().join(format!("my-compressor-snap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let out_file = dir.join("snapkv.safetensors");
    let out = compress("snapkv", "0.5", &[], &out_file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = read(&out_file);
    let want = read(&fixture().join("expected.safetensors"));
    for i in 0..2 {
        let k = format!("layer.{i}.kept_positions");
        assert!(
            got[&k].equal(&want[&format!("snapkv@0.5.{k}")]),
            "layer {i}"
        );
    }
    let diff = (&got["continuation_logits"] - &want["snapkv@0.5.continuation_logits"])
        .abs()
        .max()
        .double_value(&[]);
    assert!(diff < 1e-3, "continuation logits differ by {diff}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `value_norm` is a first-class scorer: listed as one, and `adakv` wraps it (head-adaptive
/// budgets over its scores), keeping the budget in total per layer.
#[test]
fn adakv_wraps_the_plugin_scorer() {
    let out = runner()
        .args(["list", "--kind", "scorer"])
        .output()
        .expect("run my-kvcat list");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("value_norm"), "{text}");

    let dir = std::env::temp_dir().join(format!("my-compressor-adakv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let out_file = dir.join("adakv.safetensors");
    let out = compress(
        "adakv",
        "0.5",
        &[
            "--set",
            "inner=value_norm",
            "--set",
            "inner_params={ power = 2.0 }",
        ],
        &out_file,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = read(&out_file);
    let ids: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("ids.json")).expect("ids"))
            .expect("json");
    let t = ids["context"].as_array().expect("context").len() as i64;
    for i in 0..2 {
        let kept = &got[&format!("layer.{i}.kept_positions")]; // [kv_heads, most], -1 padded
        let per_head = kept.ge(0).sum_dim_intlist(-1, false, Kind::Int64);
        let heads = per_head.size()[0];
        // head-adaptive: the layer keeps heads × ⌊t/2⌋ slots in all, however they are spread
        assert_eq!(
            per_head.sum(Kind::Int64).int64_value(&[]),
            heads * (t / 2),
            "layer {i}: {per_head}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
