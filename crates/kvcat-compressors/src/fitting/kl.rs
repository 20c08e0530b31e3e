//! The `next_token_kl` objective of `kv_fit`: all layers' fitted keys, values and β are
//! optimised *jointly* so that the model's next-token distribution over a continuation sample,
//! read through the fitted cache, matches the one read through the full cache
//! (`KL(p_full ‖ p_fitted)`, mean over the sample's positions), as Cartridges
//! (Eyuboglu et al. 2025) train a cache by context distillation.
//!
//! The sample is the start of the "repeat the context" suffix (`[instruction, context]`,
//! truncated to `kl_tokens`), fed at positions `seq_len, seq_len + 1, …` after the cache.
//! Each step is one forward and backward pass of the whole model over the sample, so this
//! objective costs far more than `output_mse`.

use super::adam::{minimise, StopRule};
use kvcat_core::model::{ForwardOptions, Logits};
use kvcat_core::{Error, KvCache, LayerCache, Llama, Result};
use tch::{Kind, Tensor};

/// Which of keys, values and β are free, and the optimiser settings.
pub struct KlSettings {
    pub steps: usize,
    pub lr: f64,
    pub tol: f64,
    pub patience: usize,
    pub fit_keys: bool,
    pub fit_values: bool,
    pub fit_bias: bool,
}

fn logprobs(model: &Llama, cache: &mut KvCache, sample: &Tensor) -> Result<Tensor> {
    let out = model.forward_with(
        sample,
        cache,
        &ForwardOptions {
            // the explicit-softmax attention path, so gradients reach the cache's bias
            capture_attention: true,
            logits: Logits::All,
            ..Default::default()
        },
    )?;
    let logits = out
        .logits
        .ok_or_else(|| Error::invalid("kv_fit: the forward computed no logits"))?;
    Ok(logits.to_kind(Kind::Float).log_softmax(-1, Kind::Float))
}

/// Fits every layer of `init` (same batch, heads and layer count as `orig`) against `orig` on
/// the token ids `sample` `[b, u]`. Returns the fitted cache and the loss before each step,
/// then the final loss.
pub fn fit_kl(
    model: &Llama,
    orig: &KvCache,
    init: &KvCache,
    sample: &Tensor,
    s: &KlSettings,
) -> Result<(KvCache, Vec<f64>)> {
    let teacher = {
        let _g = tch::no_grad_guard();
        logprobs(model, &mut orig.copy(), sample)?
    };
    let leaves = Leaves::new(init, s);
    let params = leaves.free(s);
    let build = |detach: bool| leaves.cache(init, orig.seq_len, detach);
    let rule = StopRule {
        steps: s.steps,
        tol: s.tol,
        patience: s.patience,
    };
    let mut losses = minimise(&params, s.lr, rule, "kv_fit (next_token_kl)", || {
        Ok(kl(&teacher, &logprobs(model, &mut build(false), sample)?))
    })?;
    let _g = tch::no_grad_guard();
    losses.push(kl(&teacher, &logprobs(model, &mut build(true), sample)?).double_value(&[]));
    let mut fitted = build(true);
    for (l, o) in fitted.layers.iter_mut().zip(&orig.layers) {
        l.k = l.k.to_kind(o.k.kind());
        l.v = l.v.to_kind(o.v.kind());
    }
    Ok((fitted, losses))
}

/// `KL(teacher ‖ student)` of log-probabilities `[b, u, vocab]`, summed over the vocabulary
/// and averaged over positions (a scalar).
fn kl(teacher: &Tensor, student: &Tensor) -> Tensor {
    let f = Kind::Float;
    (teacher.exp() * (teacher - student))
        .sum_dim_intlist(&[-1i64][..], false, f)
        .mean(f)
}

/// The optimised copies of every layer's keys and values `[b, kv_heads, slots, d]` and β
/// `[b, kv_heads, slots]` (zeros when the layer had none), in f32.
struct Leaves(Vec<(Tensor, Tensor, Tensor)>);

impl Leaves {
    /// Detached f32 copies of `init`'s layers, requiring grad where `s` frees them.
    fn new(init: &KvCache, s: &KlSettings) -> Leaves {
        let f = Kind::Float;
        let leaves = init
            .layers
            .iter()
            .map(|l| {
                let sz = l.k.size();
                let beta = match &l.bias {
                    Some(b) => b.to_kind(f).detach().copy(),
                    None => Tensor::zeros([sz[0], sz[1], sz[2]], (f, l.k.device())),
                };
                (
                    l.k.to_kind(f).detach().copy().set_requires_grad(s.fit_keys),
                    l.v.to_kind(f)
                        .detach()
                        .copy()
                        .set_requires_grad(s.fit_values),
                    beta.set_requires_grad(s.fit_bias),
                )
            })
            .collect();
        Leaves(leaves)
    }

    /// The free leaves, layer by layer (keys, values, β as `s` frees them).
    fn free(&self, s: &KlSettings) -> Vec<&Tensor> {
        self.0
            .iter()
            .flat_map(|(k, v, b)| [(k, s.fit_keys), (v, s.fit_values), (b, s.fit_bias)])
            .filter_map(|(t, free)| free.then_some(t))
            .collect()
    }

    /// A cache of the leaves with `init`'s positions and keep masks (`detach`: cut from the
    /// graph).
    fn cache(&self, init: &KvCache, seq_len: i64, detach: bool) -> KvCache {
        let pick = |t: &Tensor| {
            if detach {
                t.detach()
            } else {
                t.shallow_clone()
            }
        };
        let layers = self
            .0
            .iter()
            .zip(&init.layers)
            .map(|((k, v, b), l)| LayerCache {
                k: pick(k),
                v: pick(v),
                positions: l.positions.shallow_clone(),
                keep: l.keep.as_ref().map(|m| m.shallow_clone()),
                bias: Some(pick(b)),
            })
            .collect();
        KvCache { layers, seq_len }
    }
}
