//! KVzip: reconstruction scores agree with the model's own attention capture of the repeat
//! pass (renormalised over sinks, chunk and repeat keys, as KVzip scores them), sinks are
//! always kept, and the global top-k spends exactly the asked total with unequal layers.

use kvcat_compressors::eviction::kvzip::{Kvzip, KvzipParams};
use kvcat_core::model::{ForwardOptions, Logits};
use kvcat_core::{probe, Budget, CompressionInput, Compressor, LlamaConfig, Model};
use tch::{Device, Kind, Tensor};

fn tiny() -> Model {
    tch::manual_seed(5);
    let cfg = LlamaConfig {
        vocab_size: 53,
        intermediate_size: 48,
        num_hidden_layers: 3,
        max_position_embeddings: 256,
        ..LlamaConfig::tiny()
    };
    let mut m = Model::from_config(&cfg, Device::Cpu, Kind::Float).expect("model");
    // Sharper attention than the N(0, 0.02) init, so scores are far from uniform.
    tch::no_grad(|| {
        for l in &mut m.net.layers {
            let _ = l
                .self_attn
                .q_proj
                .weight
                .f_mul_(&Tensor::from(8.0))
                .expect("scale");
            let _ = l
                .self_attn
                .k_proj
                .weight
                .f_mul_(&Tensor::from(8.0))
                .expect("scale");
        }
    });
    m
}

#[test]
fn scores_match_the_captured_attention_of_the_repeat_pass() {
    let m = tiny();
    let t = 40;
    let ctx = Tensor::randint(53, [1, t], (Kind::Int64, Device::Cpu));
    let (cache, hidden) = probe::prefill_for_compression(&m, &ctx).expect("prefill");
    let instruction = vec![7_i64, 9, 11];
    let kvzip = Kvzip::new(KvzipParams {
        chunk_size: 16,
        instruction_ids: instruction.clone(),
        ..Default::default()
    })
    .expect("kvzip");
    let input = CompressionInput {
        model: &m,
        cache: &cache,
        context: &ctx,
        hidden: &hidden,
        question: None,
        budget: Budget::fraction(0.5).expect("budget"),
        seed: 0,
    };
    let scores = tch::no_grad(|| kvzip.reconstruction_scores(&input)).expect("scores");
    // Independent: full attention capture of each repeat pass, renormalised over the subset.
    let _g = tch::no_grad_guard();
    for (start, len) in [(0_i64, 16_i64), (16, 16), (32, 8)] {
        let mut ids = instruction.clone();
        if start > 0 {
            ids.extend(Vec::<i64>::try_from(ctx.get(0).narrow(0, start - 8, 8)).expect("ids"));
        }
        ids.extend(Vec::<i64>::try_from(ctx.get(0).narrow(0, start, len)).expect("ids"));
        let r = ids.len() as i64;
        let mut c = cache.copy();
        let out = m
            .forward_with(
                &Tensor::from_slice(&ids).view([1, -1]),
                &mut c,
                &ForwardOptions {
                    capture_attention: true,
                    logits: Logits::None,
                    ..Default::default()
                },
            )
            .expect("repeat pass");
        let sink = 4.min(start);
        for (l, a) in out.attention.iter().enumerate() {
            // a: [1, H, r, t + r]
            let cols = Tensor::cat(
                &[
                    Tensor::arange(sink, (Kind::Int64, Device::Cpu)),
                    Tensor::arange_start(start, start + len, (Kind::Int64, Device::Cpu)),
                    Tensor::arange_start(t, t + r, (Kind::Int64, Device::Cpu)),
                ],
                0,
            );
            let sub = a.index_select(3, &cols);
            let sub = &sub / sub.sum_dim_intlist(-1, true, Kind::Float);
            let want = sub
                .narrow(3, sink, len)
                .view([1, 2, 2 * r, len])
                .amax([2], false);
            let got = scores[l].narrow(2, start, len);
            let diff = (&got - &want).abs().max().double_value(&[]);
            assert!(diff < 1e-5, "layer {l} chunk {start}: diff {diff}");
        }
    }
}

#[test]
fn global_topk_keeps_sinks_and_spends_the_total_budget() {
    let m = tiny();
    let t = 60;
    let ctx = Tensor::randint(53, [1, t], (Kind::Int64, Device::Cpu));
    let (cache, hidden) = probe::prefill_for_compression(&m, &ctx).expect("prefill");
    for layerwise in [false, true] {
        let kvzip = Kvzip::new(KvzipParams {
            layerwise,
            ..Default::default()
        })
        .expect("kvzip");
        let input = CompressionInput {
            model: &m,
            cache: &cache,
            context: &ctx,
            hidden: &hidden,
            question: None,
            budget: Budget::fraction(0.25).expect("budget"),
            seed: 0,
        };
        let out = kvzip.compress(&input).expect("compress").cache;
        let per_layer: Vec<i64> = out
            .layers
            .iter()
            .map(|l| l.kept_per_head().sum(Kind::Int64).int64_value(&[]))
            .collect();
        assert_eq!(per_layer.iter().sum::<i64>(), 3 * 2 * 15, "{per_layer:?}");
        if layerwise {
            assert!(per_layer.iter().all(|&n| n == 30), "{per_layer:?}");
        } else {
            assert!(
                per_layer.iter().any(|&n| n != 30),
                "global allocation was uniform: {per_layer:?}"
            );
        }
        for l in &out.layers {
            for pos in l.kept_positions(0) {
                let pos = Vec::<i64>::try_from(&pos).expect("positions");
                assert_eq!(&pos[..4], &[0, 1, 2, 3], "sinks evicted");
            }
        }
    }
}
