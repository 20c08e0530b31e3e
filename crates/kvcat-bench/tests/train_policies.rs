//! Train-time masking policies and the KV-CAT loss on tiny random models: registry contents,
//! mask shapes and budgets, `none` ≡ unmasked, masked training ≡ a compressed cache, no
//! gradient through dropped slots, gradient into the router.

use kvcat_bench::train::loss::{batch_loss, masked_logits, ntp};
use kvcat_bench::train::LossConfig;
use kvcat_compressors as _;
use kvcat_core::compressor::build_compressor;
use kvcat_core::model::ForwardOptions;
use kvcat_core::policy::build_policy;
use kvcat_core::registry;
use kvcat_core::summary::{summarize, SummaryLayout};
use kvcat_core::{
    probe, Budget, CompressionInput, KvCache, LlamaConfig, MaskPlan, MaskingPolicy, Model,
    PolicyDescriptor, PolicyInput,
};
use kvcat_policies as _;
use rand::SeedableRng;
use tch::{nn, Device, Kind, Tensor};

fn cfg(layers: i64, tied: bool) -> LlamaConfig {
    LlamaConfig {
        vocab_size: 97,
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: layers,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 8,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        max_position_embeddings: 256,
        tie_word_embeddings: tied,
        bos_token_id: None,
        eos_token_ids: vec![],
    }
}

fn tiny(layers: i64, tied: bool) -> Model {
    tch::manual_seed(0);
    Model::from_config(&cfg(layers, tied), Device::Cpu, Kind::Float).unwrap()
}

fn tokens(b: i64, t: i64) -> Tensor {
    tch::manual_seed(1);
    Tensor::randint(97, [b, t], (Kind::Int64, Device::Cpu))
}

/// Builds `name` with default params and its own VarStore group.
fn policy(
    name: &str,
    model: &Model,
    params: toml::Table,
) -> (Box<dyn MaskingPolicy>, nn::VarStore) {
    let mut p = build_policy(name, &params).unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    p.init(&(vs.root() / name), &model.config).unwrap();
    (p, vs)
}

/// The teacher pass with the captures `p` needs, then its plan.
fn make_plan(
    p: &mut dyn MaskingPolicy,
    model: &Model,
    x: &Tensor,
    prefix: i64,
    kept: i64,
) -> MaskPlan {
    let needs = p.needs();
    let mut cache = KvCache::new();
    let out = tch::no_grad(|| {
        model.forward_with(
            x,
            &mut cache,
            &ForwardOptions {
                capture_queries: needs.queries,
                capture_attention: needs.attention,
                capture_hidden: needs.hidden,
                ..Default::default()
            },
        )
    })
    .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    p.plan(
        &PolicyInput {
            model,
            tokens: x,
            prefix_len: prefix,
            kept,
            teacher: &out,
            cache: &cache,
        },
        &mut rng,
    )
    .unwrap()
}

#[test]
fn registry_lists_every_policy_and_rejects_bad_names_and_params() {
    let all = registry::all::<PolicyDescriptor>().unwrap();
    for name in kvcat_policies::POLICY_NAMES {
        assert!(all.contains_key(name), "policy `{name}` not registered");
    }
    let e = build_policy("nope", &toml::Table::new())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("nope") && e.contains("attention_matching") && e.contains("sink_window"),
        "{e}"
    );
    for name in kvcat_policies::POLICY_NAMES {
        let mut t = toml::Table::new();
        t.insert("bogus_field".into(), toml::Value::Integer(1));
        let e = build_policy(name, &t).err().unwrap().to_string();
        assert!(e.contains("bogus_field") && e.contains(name), "{name}: {e}");
    }
    let mut t = toml::Table::new();
    t.insert("sinks".into(), toml::Value::Integer(-1));
    let e = build_policy("sink_window", &t).err().unwrap().to_string();
    assert!(e.contains("sinks"), "{e}");
}

#[test]
fn every_policy_masks_have_the_right_shape_and_kept_count() {
    let model = tiny(2, true);
    let (b, t, p) = (2, 24, 13);
    let x = tokens(b, t);
    let all = registry::all::<PolicyDescriptor>().unwrap();
    for name in all.keys() {
        let (mut pol, _vs) = policy(name, &model, toml::Table::new());
        for kept in [1, 5, p] {
            let plan = make_plan(pol.as_mut(), &model, &x, p, kept);
            let want = if *name == "none" { p } else { kept };
            assert_eq!(plan.kept, want, "{name} kept");
            // summary slots count as kept slots; the keep mask marks the raw ones
            let raw = plan
                .summary
                .as_ref()
                .map_or(want, |s| want - s.layout.summary_slots());
            assert_eq!(plan.prefix_len, p);
            assert_eq!(plan.keep.len(), 2, "{name}: one mask per layer");
            for m in &plan.keep {
                assert_eq!(m.size(), vec![b, 2, p], "{name} mask shape");
                assert_eq!(m.kind(), Kind::Bool);
                let per_head = m.sum_dim_intlist(-1, false, Kind::Int64);
                let expect = Tensor::full([b, 2], raw, (Kind::Int64, Device::Cpu));
                assert!(per_head.equal(&expect), "{name} @ {kept}: {per_head}");
            }
            if let Some(soft) = &plan.soft_bias {
                assert_eq!(soft.len(), 2);
                assert_eq!(soft[0].size(), vec![b, 2, p], "{name} soft bias shape");
            }
        }
    }
}

#[test]
fn sink_window_and_attn_pick_what_they_promise() {
    let model = tiny(2, true);
    let x = tokens(1, 20);
    let (mut sw, _) = policy("sink_window", &model, toml::Table::new());
    let plan = make_plan(sw.as_mut(), &model, &x, 12, 6);
    let kept: Vec<bool> = Vec::<bool>::try_from(plan.keep[0].get(0).get(0)).unwrap();
    let want: Vec<bool> = (0..12).map(|j| j < 4 || j >= 10).collect();
    assert_eq!(kept, want);

    // ATTN keeps the slots with the largest continuation attention mass.
    let (mut at, _) = policy("attn", &model, toml::Table::new());
    let plan = make_plan(at.as_mut(), &model, &x, 12, 3);
    let mut cache = KvCache::new();
    let out = tch::no_grad(|| {
        model.forward_with(
            &x,
            &mut cache,
            &ForwardOptions {
                capture_attention: true,
                ..Default::default()
            },
        )
    })
    .unwrap();
    let probs = &out.attention[1]; // [1, 4, 20, 20]
    let mass = probs
        .narrow(2, 12, 8)
        .narrow(3, 0, 12)
        .sum_dim_intlist(2, false, Kind::Float); // [1,4,12]
    let kv_mass = mass
        .view([1, 2, 2, 12])
        .sum_dim_intlist(2, false, Kind::Float);
    let top = kv_mass.topk(3, -1, true, true).1.sort(-1, false).0;
    let chosen = plan.keep[1].nonzero().select(1, 2).view([1, 2, 3]);
    assert!(top.equal(&chosen), "{top} vs {chosen}");
}

#[test]
fn none_policy_masked_loss_equals_full_loss() {
    let model = tiny(2, false);
    let x = tokens(2, 24);
    let p = 10;
    let (mut none, _) = policy("none", &model, toml::Table::new());
    let plan = make_plan(none.as_mut(), &model, &x, p, 3);
    let _g = tch::no_grad_guard();
    let full = model.forward(&x, &mut KvCache::new()).unwrap();
    let masked = masked_logits(&model, &x, &plan).unwrap();
    let a = ntp(&full, &x, p).double_value(&[]);
    let b = ntp(&masked, &x, p).double_value(&[]);
    assert!((a - b).abs() < 1e-6, "full {a} vs masked {b}");
    let terms = batch_loss(
        &model,
        None,
        none.as_mut(),
        &x,
        &x,
        p,
        3,
        &LossConfig::default(),
        &mut rand::rngs::StdRng::seed_from_u64(0),
    )
    .unwrap();
    assert!((terms.mask.unwrap() - a).abs() < 1e-6);
    // and a real mask changes it
    let (mut sw, _) = policy("sink_window", &model, toml::Table::new());
    let plan = make_plan(sw.as_mut(), &model, &x, p, 3);
    let c = ntp(&masked_logits(&model, &x, &plan).unwrap(), &x, p).double_value(&[]);
    assert!(
        (a - c).abs() > 1e-4,
        "masking 7 of 10 prefix slots changed nothing"
    );
}

#[test]
fn masked_training_pass_equals_decoding_from_a_compressed_cache() {
    let model = tiny(2, true);
    let x = tokens(2, 20);
    let p = 12;
    for name in ["attn", "rand", "attention_matching"] {
        let (mut pol, _) = policy(name, &model, toml::Table::new());
        let plan = make_plan(pol.as_mut(), &model, &x, p, 4);
        let _g = tch::no_grad_guard();
        let train = masked_logits(&model, &x, &plan).unwrap().narrow(1, p, 8);
        let mut cache = model.prefill(&x.narrow(1, 0, p)).unwrap();
        for (l, keep) in plan.keep.iter().enumerate() {
            cache.layers[l].keep = Some(keep.shallow_clone());
        }
        let dec = model.forward(&x.narrow(1, p, 8), &mut cache).unwrap();
        let d = (&train - &dec).abs().max().double_value(&[]);
        assert!(
            d < 1e-4,
            "{name}: masked training logits differ from compressed decoding by {d}"
        );
    }
}

#[test]
fn dropped_slots_get_exactly_zero_gradient_from_the_masked_continuation_loss() {
    // One layer, untied head: a prefix token reaches continuation-query predictions only
    // through its key and value, so a dropped slot's embedding must get exactly zero gradient.
    let model = tiny(1, false);
    let (t, p) = (24i64, 12i64);
    let ids: Vec<i64> = (0..t).map(|i| (i * 37 + 5) % 97).collect(); // distinct ids
    let x = Tensor::from_slice(&ids).view([1, t]);
    let mut params = toml::Table::new();
    params.insert("sinks".into(), toml::Value::Integer(1));
    let (mut sw, _) = policy("sink_window", &model, params);
    let plan = make_plan(sw.as_mut(), &model, &x, p, 3); // keeps slots 0, 10, 11
    model.vs.variables().values().for_each(|v| {
        let mut v = v.shallow_clone();
        v.zero_grad()
    });
    let logits = masked_logits(&model, &x, &plan).unwrap();
    // Targets predicted by continuation queries (positions P..T−1).
    ntp(&logits, &x, p + 1).backward();
    let g = model.net.embed_tokens.grad();
    for j in 1..10 {
        let row = g
            .get(ids[j as usize])
            .abs()
            .sum(Kind::Float)
            .double_value(&[]);
        assert_eq!(row, 0.0, "dropped slot {j} got gradient {row}");
    }
    for j in [0i64, 10, 11, 15] {
        let row = g
            .get(ids[j as usize])
            .abs()
            .sum(Kind::Float)
            .double_value(&[]);
        assert!(row > 0.0, "kept/continuation slot {j} got no gradient");
    }
}

#[test]
fn router_parameters_receive_gradient() {
    let model = tiny(2, true);
    let x = tokens(2, 24);
    for (input, relaxation) in [("keys", "straight_through"), ("hidden", "log_utility")] {
        let mut params = toml::Table::new();
        params.insert("input".into(), toml::Value::String(input.into()));
        params.insert("relaxation".into(), toml::Value::String(relaxation.into()));
        params.insert("budget_reg".into(), toml::Value::Float(0.1));
        let (mut router, vs) = policy("router", &model, params);
        let loss = LossConfig {
            w_full: 0.0,
            ..Default::default()
        };
        let terms = batch_loss(
            &model,
            None,
            router.as_mut(),
            &x,
            &x,
            12,
            4,
            &loss,
            &mut rand::rngs::StdRng::seed_from_u64(0),
        )
        .unwrap();
        assert!(terms.reg.is_some());
        terms.total.backward();
        let vars = vs.variables();
        assert_eq!(vars.len(), 4, "{input}: weight and bias per layer");
        for (n, v) in vars {
            let g = v.grad();
            assert!(g.defined(), "{input}: {n} has no gradient");
            let s = g.abs().sum(Kind::Float).double_value(&[]);
            assert!(s > 0.0 && s.is_finite(), "{input}: {n} gradient {s}");
        }
    }
}

/// `‖X w − X 1‖²` from the Gram matrix: `1ᵀG1 − 2(G1)ᵀw + wᵀGw`, per row `[N]`.
fn omp_residual(gram: &Tensor, w: &Tensor) -> Tensor {
    let c = gram.sum_dim_intlist(-1, false, Kind::Double);
    let total = c.sum_dim_intlist(-1, false, Kind::Double);
    let gw = gram.matmul(&w.unsqueeze(-1)).squeeze_dim(-1);
    total - (&c * w).sum_dim_intlist(-1, false, Kind::Double) * 2.0
        + (w * gw).sum_dim_intlist(-1, false, Kind::Double)
}

#[test]
fn attention_matching_omp_fits_better_than_random_subsets() {
    use kvcat_policies::attention_matching::gram_omp_select;
    tch::manual_seed(3);
    let (n, nq, p, d, k) = (3i64, 48i64, 40i64, 8i64, 8i64);
    let opts = (Kind::Double, Device::Cpu);
    let q = Tensor::randn([n, nq, d], opts) * 2.0;
    let keys = Tensor::randn([n, p, d], opts);
    let v = Tensor::randn([n, p, d], opts);
    let logits = q.matmul(&keys.transpose(-2, -1)) / (d as f64).sqrt();
    let a = (&logits - logits.max_dim(-1, true).0).exp();
    let gram = a.transpose(-2, -1).matmul(&a) * (v.matmul(&v.transpose(-2, -1)) + 1.0);
    let (sel, w) = gram_omp_select(&gram, k, 1e-4);
    let counts = sel.sum_dim_intlist(-1, false, Kind::Int64);
    assert!(counts.equal(&Tensor::full([n], k, (Kind::Int64, Device::Cpu))));
    assert_eq!(
        w.ne(0.0)
            .logical_and(&sel.logical_not())
            .sum(Kind::Int64)
            .int64_value(&[]),
        0
    );
    let omp = omp_residual(&gram, &w);
    // Random subsets of the same size with their own (ridge, non-negative) least-squares fit;
    // OMP beats the best of 15 (by about 25 % at these sizes).
    let mut rand_res: Vec<Vec<f64>> = vec![vec![]; n as usize];
    for s in 0..15 {
        tch::manual_seed(100 + s);
        let idx = Tensor::rand([n, p], opts).topk(k, -1, true, false).1;
        let g_ss = gram
            .gather(1, &idx.unsqueeze(-1).expand([n, k, p], false), false)
            .gather(2, &idx.unsqueeze(1).expand([n, k, k], false), false);
        let c_s = gram
            .sum_dim_intlist(-1, false, Kind::Double)
            .gather(1, &idx, false);
        let scale = g_ss.diagonal(0, -2, -1).mean_dim(-1, true, Kind::Double);
        let lhs = &g_ss + Tensor::eye(k, opts).unsqueeze(0) * (scale.unsqueeze(-1) * 1e-4);
        let ws = Tensor::linalg_solve(&lhs, &c_s.unsqueeze(-1), true)
            .squeeze_dim(-1)
            .clamp_min(0.0);
        let w_full = Tensor::zeros([n, p], opts).scatter(1, &idx, &ws);
        let r = omp_residual(&gram, &w_full);
        for i in 0..n {
            rand_res[i as usize].push(r.double_value(&[i]));
        }
    }
    for i in 0..n {
        let mut rs = rand_res[i as usize].clone();
        rs.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let o = omp.double_value(&[i]);
        let total = gram.get(i).sum(Kind::Double).double_value(&[]);
        assert!(
            o < rs[0],
            "head {i}: OMP residual {o} vs best random {} (total {total})",
            rs[0]
        );
        assert!(o < total, "OMP must explain part of the target");
    }
}

fn gist_params(chunk_len: i64) -> toml::Table {
    let mut t = toml::Table::new();
    t.insert("chunk_len".into(), toml::Value::Integer(chunk_len));
    t
}

/// Training and evaluation share the summary mechanism: the gist policy's masked pass equals
/// decoding from the cache the `gist` compressor builds from the policy's saved variables.
#[test]
fn gist_training_pass_equals_decoding_from_the_gist_compressed_cache() {
    let mut model = tiny(2, true);
    let x = tokens(2, 40);
    let (p, kept) = (30, 9);
    let (mut gist, vs) = policy("gist", &model, gist_params(8));
    let plan = make_plan(gist.as_mut(), &model, &x, p, kept);
    let layout = &plan.summary.as_ref().unwrap().layout;
    // 4 chunks (⌈30/8⌉) × 2 slots, and one raw slot of window
    assert_eq!((layout.summary_slots(), layout.window), (8, 1));
    assert_eq!(plan.kept, kept);
    let _g = tch::no_grad_guard();
    let train = masked_logits(&model, &x, &plan).unwrap().narrow(1, p, 10);
    for (name, t) in vs.variables() {
        model.net.learned.insert(name, t.copy()); // as loading the checkpoint does
    }
    let ctx = x.narrow(1, 0, p);
    let (cache, hidden) = probe::prefill_for_compression(&model, &ctx).unwrap();
    let out = build_compressor("gist", &toml::Table::new())
        .unwrap()
        .compress(&CompressionInput {
            model: &model,
            cache: &cache,
            context: &ctx,
            hidden: &hidden,
            question: None,
            budget: Budget::slots(kept).unwrap(),
            seed: 0,
        })
        .unwrap();
    let mut compressed = out.cache;
    for l in &compressed.layers {
        assert_eq!(l.slots(), kept, "summary + window slots per head");
    }
    let dec = model.forward(&x.narrow(1, p, 10), &mut compressed).unwrap();
    let d = (&train - &dec).abs().max().double_value(&[]);
    assert!(
        d < 1e-4,
        "gist training logits differ from compressed decoding by {d}"
    );
}

/// A summary slot reads only its own chunk (and earlier summary slots), and sits at the
/// positions of its chunk's last tokens.
#[test]
fn gist_summary_slots_read_only_their_own_chunk() {
    let model = tiny(2, true);
    let layout = SummaryLayout::for_budget(24, 6, 8, 4).unwrap(); // 3 chunks × 2 slots
    assert_eq!(layout.chunks, vec![(0, 8), (8, 16), (16, 24)]);
    let emb = Tensor::randn([4, 32], (Kind::Float, Device::Cpu)) * 0.5;
    let a = tokens(1, 24);
    let b = a.copy();
    let _ = b.narrow(1, 10, 1).fill_(5); // a token of the second chunk
    assert_ne!(a.int64_value(&[0, 10]), 5);
    let _g = tch::no_grad_guard();
    let sa = summarize(&model, &model.prefill(&a).unwrap(), &emb, &layout).unwrap();
    let sb = summarize(&model, &model.prefill(&b).unwrap(), &emb, &layout).unwrap();
    // (a summary slot's layer-0 key is its embedding's; what it read shows from layer 1 on)
    for (i, (la, lb)) in sa.layers.iter().zip(&sb.layers).enumerate() {
        let diff = |lo: i64, n: i64| {
            (la.k.narrow(2, lo, n) - lb.k.narrow(2, lo, n))
                .abs()
                .max()
                .double_value(&[])
        };
        assert_eq!(
            diff(0, 2),
            0.0,
            "the first chunk's summaries saw the second chunk"
        );
        if i > 0 {
            assert!(
                diff(2, 2) > 1e-6,
                "the second chunk's summaries ignore their chunk"
            );
        }
        let pos = Vec::<i64>::try_from(la.positions.get(0).get(0)).unwrap();
        assert_eq!(pos, vec![6, 7, 14, 15, 22, 23]);
    }
    assert_eq!(
        sa.seq_len, 24,
        "what follows continues at the prefix length"
    );
}

/// The loss's shared-prefix path (the unmasked pass's cache) gives the same masked term as the
/// separate masked forward, and gradient reaches the learned summary embeddings.
#[test]
fn gist_embeddings_receive_gradient_through_the_kv_cat_loss() {
    let model = tiny(2, true);
    let x = tokens(2, 32);
    let (p, kept) = (20, 6);
    let (mut gist, vs) = policy("gist", &model, gist_params(8));
    let terms = batch_loss(
        &model,
        None,
        gist.as_mut(),
        &x,
        &x,
        p,
        kept,
        &LossConfig::default(),
        &mut rand::rngs::StdRng::seed_from_u64(0),
    )
    .unwrap();
    let plan = make_plan(gist.as_mut(), &model, &x, p, kept);
    let reference = tch::no_grad(|| ntp(&masked_logits(&model, &x, &plan).unwrap(), &x, p));
    let (a, b) = (terms.mask.unwrap(), reference.double_value(&[]));
    assert!(
        (a - b).abs() < 1e-5,
        "shared-prefix {a} vs masked forward {b}"
    );
    terms.total.backward();
    let vars = vs.variables();
    let g = vars["gist.embeddings"].grad();
    let s = g.abs().sum(Kind::Float).double_value(&[]);
    assert!(s > 0.0 && s.is_finite(), "summary embeddings gradient {s}");
    assert!(
        !vars["gist.chunk_len"].requires_grad(),
        "chunk_len is not trained"
    );
}
