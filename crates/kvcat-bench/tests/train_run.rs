//! End-to-end training on a tiny from-scratch model and a generated corpus: resume is
//! bit-for-bit, checkpoints load as HF directories, bad input gives errors naming the field,
//! and a diverging run stops with its last good checkpoint intact.

use kvcat_bench::train::{train, BudgetSchedule, TrainConfig, TrainRunOptions};
use kvcat_core::{Budget, LlamaConfig, Model};
use kvcat_policies as _;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

fn scratch_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kvcat-train-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A deterministic pseudo-English corpus of ~60k characters.
fn corpus(dir: &Path) -> PathBuf {
    let words = [
        "the", "king", "queen", "of", "and", "to", "a", "my", "lord", "is", "in", "that", "you",
        "not", "with", "his", "be", "it", "for", "love", "what", "shall", "thou", "good", "sir",
    ];
    let mut s = String::new();
    let mut z: u64 = 12345;
    for line in 0..2000 {
        for _ in 0..6 {
            z = z
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            s.push_str(words[(z >> 33) as usize % words.len()]);
            s.push(' ');
        }
        s.push_str(if line % 3 == 0 { "!\n" } else { ".\n" });
    }
    let p = dir.join("corpus.txt");
    std::fs::write(&p, s).unwrap();
    p
}

fn tiny_config(corpus: &Path, cache: &Path) -> TrainConfig {
    let mut c = TrainConfig::default();
    c.model.config = Some(LlamaConfig {
        vocab_size: 300,
        max_position_embeddings: 128,
        ..LlamaConfig::tiny()
    });
    c.data.corpora = vec![corpus.display().to_string()];
    c.data.cache_dir = Some(cache.to_path_buf());
    c.data.heldout_fraction = 0.1;
    c.data.synthetic_fraction = 0.25;
    c.batch_size = 4;
    c.seq_len = 32;
    c.steps = 4;
    c.grad_accum = 2;
    c.optim.warmup = 1;
    c.eval.sequences = 4;
    c.policy.name = "router".into();
    c.policy
        .params
        .insert("gumbel".into(), toml::Value::Float(1.0));
    c.policy
        .params
        .insert("budget_reg".into(), toml::Value::Float(0.1));
    c.loss.w_kd = 0.5;
    c
}

fn tensors(path: &Path) -> Vec<(String, Tensor)> {
    let mut v = Tensor::read_safetensors(path).unwrap();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn assert_same(a: &Path, b: &Path) {
    let (ta, tb) = (tensors(a), tensors(b));
    assert_eq!(ta.len(), tb.len(), "{}", a.display());
    for ((na, xa), (nb, xb)) in ta.iter().zip(&tb) {
        assert_eq!(na, nb);
        assert!(xa.equal(xb), "{}: tensor `{na}` differs", a.display());
    }
}

#[test]
fn resume_continues_bit_for_bit_and_the_checkpoint_loads() {
    let root = scratch_dir("resume");
    let cfg = tiny_config(&corpus(&root), &root.join("cache"));
    let (a, b) = (root.join("a"), root.join("b"));
    let sa = train(&cfg, &a, &TrainRunOptions::default()).unwrap();
    assert_eq!(sa.steps, 4);
    let opts = TrainRunOptions {
        stop_after: Some(2),
        ..Default::default()
    };
    let sb = train(&cfg, &b, &opts).unwrap();
    assert!(sb.interrupted && sb.steps == 2);
    // Without --resume an existing checkpoint is refused.
    let e = train(&cfg, &b, &TrainRunOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("--resume"), "{e}");
    let resumed = TrainRunOptions {
        resume: true,
        ..Default::default()
    };
    let sb = train(&cfg, &b, &resumed).unwrap();
    assert_eq!(sb.steps, 4);
    for f in [
        "model.safetensors",
        "optimizer.safetensors",
        "policy.safetensors",
    ] {
        assert_same(&a.join(f), &b.join(f));
    }
    assert_eq!(sa.final_eval, sb.final_eval);
    let ma = std::fs::read_to_string(a.join("metrics.jsonl")).unwrap();
    let mb = std::fs::read_to_string(b.join("metrics.jsonl")).unwrap();
    let losses = |m: &str| -> Vec<String> {
        m.lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                format!("{} {} {}", v["step"], v["loss"], v["grad_norm"])
            })
            .collect()
    };
    assert_eq!(losses(&ma), losses(&mb));
    assert_eq!(losses(&ma).len(), 4);

    // The checkpoint is an HF directory with a tokenizer; the loaded model reproduces the
    // held-out loss recorded at the end of training.
    let m = Model::load(&a, Device::Cpu, Kind::Float).unwrap();
    let tok = m.tokenizer.as_ref().expect("tokenizer.json saved");
    let ids = tok.encode("the king and the queen").unwrap();
    assert_eq!(tok.decode(&ids).unwrap(), "the king and the queen");
    let x = Tensor::from_slice(&ids).view([1, -1]);
    let logits = tch::no_grad(|| m.forward(&x, &mut kvcat_core::KvCache::new())).unwrap();
    assert_eq!(logits.size()[2], 300);
    // A different config cannot resume this checkpoint.
    let mut other = cfg.clone();
    other.seed = 1;
    let e = train(&other, &a, &resumed).unwrap_err().to_string();
    assert!(e.contains("different configuration"), "{e}");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn content_hash_is_canonical() {
    let a = TrainConfig::default();
    let text = a.to_toml().unwrap();
    let b = TrainConfig::from_toml_str(&text).unwrap();
    assert_eq!(a.content_hash(), b.content_hash());
    let mut c = a.clone();
    c.optim.lr *= 2.0;
    assert_ne!(a.content_hash(), c.content_hash());
    assert_eq!(a.content_hash().len(), 64);
}

fn err_of(cfg: &TrainConfig, root: &Path) -> String {
    let out = root.join(format!("out-{}", cfg.content_hash()));
    format!(
        "{:#}",
        train(cfg, &out, &TrainRunOptions::default()).unwrap_err()
    )
}

#[test]
fn bad_input_errors_name_the_field() {
    let root = scratch_dir("bad");
    let base = tiny_config(&corpus(&root), &root.join("cache"));
    let check = |cfg: TrainConfig, want: &[&str]| {
        let e = err_of(&cfg, &root);
        for w in want {
            assert!(e.contains(w), "expected `{w}` in: {e}");
        }
    };
    let mut c = base.clone();
    c.policy.name = "nope".into();
    check(c, &["policy.name", "nope", "attn"]);
    let mut c = base.clone();
    c.policy
        .params
        .insert("unknown_knob".into(), toml::Value::Integer(3));
    check(c, &["policy", "unknown_knob"]);
    let mut c = base.clone();
    c.budget = BudgetSchedule::Uniform { min: 0.0, max: 0.5 };
    check(c, &["budget.min", "(0, 1]"]);
    let mut c = base.clone();
    c.budget = BudgetSchedule::Fixed {
        values: vec![Budget::Fraction(0.5), Budget::Slots(20)],
    };
    check(c, &["budget.values[1]", "20 slots", "split.min_prefix"]);
    let mut c = base.clone();
    c.split.max_prefix = Some(32);
    check(c, &["split.max_prefix", "seq_len"]);
    let mut c = base.clone();
    c.data.corpora = vec![root.join("missing.txt").display().to_string()];
    check(c, &["data.corpora[0]", "does not exist"]);
    let empty = root.join("empty.txt");
    std::fs::write(&empty, "  \n").unwrap();
    let mut c = base.clone();
    c.data.corpora = vec![empty.display().to_string()];
    check(c, &["no text"]);
    let mut c = base.clone();
    c.model.source = root.join("nowhere").display().to_string();
    c.model.config = None;
    check(c, &["model.source"]);

    // TOML-level errors: a fraction above 1, an unknown field.
    let good = base.to_toml().unwrap();
    let e = TrainConfig::from_toml_str(&good.replace("max = 1.0", "max = 1.5")).unwrap_err();
    assert!(format!("{e:#}").contains("budget.max"), "{e:#}");
    let e = TrainConfig::from_toml_str(&format!("stepz = 3\n{good}")).unwrap_err();
    assert!(format!("{e:#}").contains("stepz"), "{e:#}");
    let bad_budget = good.replace(
        "kind = \"log_uniform\"\nmin = 0.1\nmax = 1.0",
        "kind = \"fixed\"\nvalues = [2.5]",
    );
    assert_ne!(bad_budget, good);
    let e = TrainConfig::from_toml_str(&bad_budget).unwrap_err();
    assert!(format!("{e:#}").contains("2.5"), "{e:#}");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_diverging_run_stops_and_keeps_its_last_good_checkpoint() {
    let root = scratch_dir("nan");
    let mut cfg = tiny_config(&corpus(&root), &root.join("cache"));
    cfg.optim.lr = 1e30;
    cfg.optim.warmup = 0;
    cfg.optim.clip = 0.0;
    cfg.optim.weight_decay = 0.0;
    cfg.steps = 6;
    cfg.save_every = 1;
    let out = root.join("out");
    let e = format!(
        "{:#}",
        train(&cfg, &out, &TrainRunOptions::default()).unwrap_err()
    );
    assert!(e.contains("not finite") && e.contains("step"), "{e}");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("trainer_state.json")).unwrap())
            .unwrap();
    let saved = state["step"].as_u64().unwrap();
    assert!(saved >= 1 && saved < 6, "saved step {saved}");
    assert!(e.contains(&format!("step {saved})")), "{e}");
    Model::load(&out, Device::Cpu, Kind::Float).unwrap();
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn frozen_teacher_distillation_runs_and_logs_every_term() {
    let root = scratch_dir("frozen");
    let mut cfg = tiny_config(&corpus(&root), &root.join("cache"));
    cfg.policy = kvcat_bench::train::PolicyConfig {
        name: "attention_matching".into(),
        params: toml::Table::new(),
    };
    cfg.loss.teacher = kvcat_bench::train::TeacherChoice::Frozen;
    cfg.loss.w_kd = 1.0;
    cfg.steps = 2;
    let out = root.join("out");
    let s = train(&cfg, &out, &TrainRunOptions::default()).unwrap();
    let last = s.last.unwrap();
    let (mask, kd, full) = (last.mask.unwrap(), last.kd.unwrap(), last.full.unwrap());
    assert!(mask.is_finite() && full.is_finite());
    // The masked student differs from the unmasked frozen teacher whenever slots are dropped.
    assert!(kd > 0.0 && kd.is_finite(), "kd {kd}");
    assert!(last.kept_fraction > 0.0 && last.kept_fraction <= 1.0);
    assert!(
        !out.join("policy.safetensors").exists(),
        "attention_matching has no parameters"
    );
    let _ = std::fs::remove_dir_all(&root);
}
