//! `kv_fit`: gradient-based KV fitting, in the spirit of KVSculpt (free compacted keys and
//! values optimised against the full cache's attention) and Cartridges (Eyuboglu et al. 2025,
//! a trained cache), with the per-slot mass bias β of Zweiger et al. 2026.
//!
//! A registered eviction compressor (`init`, e.g. `snapkv`) picks the `t` starting slots per
//! head. Then, layer by layer, the kept keys `k` `[b, kv_heads, t, d]`, values `v` and bias β
//! `[b, kv_heads, t]` become free parameters, optimised with Adam for at most `steps` steps
//! (stopping early when the loss improves by less than a relative `tol` for `patience` steps)
//! to minimise, over reference queries `Q` (the "repeat the context" pass, see
//! [`reference`](super::reference)):
//!
//! `L = ‖O' − O‖² / ‖O‖² + mass_weight · mean_q (lse'_q − lse_q)²`
//!
//! where `O = softmax(QKᵀ/√d + o) V` over the original slots, `O'` the same over the fitted
//! slots with β, and `lse` the log attention mass (so the fitted block still mixes correctly
//! with tokens appended later). With `objective = "next_token_kl"` all layers are instead fitted
//! jointly to the full cache's next-token distribution over a continuation sample
//! ([`kl`](super::kl)).

use super::adam::{minimise_with_grads, StopRule};
use super::kl::{fit_kl, KlSettings};
use super::layer_offset;
use super::reference::{fit_layers, ReferenceSource};
use kvcat_core::compressor::{
    build_compressor, Compressed, CompressionInput, Compressor, CompressorDescriptor,
};
use kvcat_core::registry::{parse_params, to_table};
use kvcat_core::{Error, KvCache, LayerCache, Result};
use serde::{Deserialize, Serialize};
use std::time::Instant;
use tch::{Kind, Tensor};

/// What `kv_fit` minimises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    /// Relative attention-output MSE over reference queries (+ `mass_weight` · log-mass MSE),
    /// fitted layer by layer.
    OutputMse,
    /// Next-token KL over a continuation sample (the first `kl_tokens` of the repeat suffix),
    /// all layers jointly ([`kl`](super::kl)).
    NextTokenKl,
}

/// Parameters of `kv_fit`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KvFitParams {
    /// The registered compressor that picks the starting slots (any eviction compressor).
    pub init: String,
    /// Its parameter table.
    pub init_params: toml::Table,
    pub objective: Objective,
    /// Maximum Adam steps per layer.
    pub steps: usize,
    /// Adam learning rate (β₁ 0.9, β₂ 0.999, ε 1e-8). Larger rates over-fit the reference
    /// queries (docs/benchmarks/fitting.md: 0.01 gave a 30% higher held-out error than 0.002).
    pub lr: f64,
    /// Early stop: relative improvement of the best loss below `tol` for `patience` steps.
    pub tol: f64,
    pub patience: usize,
    /// Weight of the log-mass term.
    pub mass_weight: f64,
    /// Which of keys, values, bias are free.
    pub fit_keys: bool,
    pub fit_values: bool,
    pub fit_bias: bool,
    /// Reference queries: see `attention_matching`.
    pub instruction_ids: Vec<i64>,
    pub self_queries: bool,
    pub question_queries: bool,
    pub max_queries: i64,
    pub layer_by_layer: bool,
    /// Tokens of the continuation sample for `next_token_kl`.
    pub kl_tokens: i64,
}

impl Default for KvFitParams {
    fn default() -> Self {
        KvFitParams {
            init: "snapkv".into(),
            init_params: toml::Table::new(),
            objective: Objective::OutputMse,
            steps: 100,
            lr: 0.002,
            tol: 1e-4,
            patience: 10,
            mass_weight: 0.1,
            fit_keys: true,
            fit_values: true,
            fit_bias: true,
            instruction_ids: vec![],
            self_queries: true,
            question_queries: true,
            max_queries: 512,
            layer_by_layer: true,
            kl_tokens: 128,
        }
    }
}

/// The `kv_fit` compressor.
pub struct KvFit {
    pub params: KvFitParams,
    init: Box<dyn Compressor>,
}

/// The loss trace of one layer's fit.
#[derive(Debug, Clone)]
pub struct FitTrace {
    /// Loss before each step, then the final loss (length = steps taken + 1).
    pub losses: Vec<f64>,
    /// Final relative output error `‖O' − O‖/‖O‖`.
    pub rel_output_error: f64,
}

/// Attention log-mass and output of grouped queries `q` `[b, h, n, d]` over keys `k`
/// `[b, h, s, d]`, values `v` and offset `o` `[b, h, s]`: `(lse [b, h, n], out [b, h, n, d])`.
fn attend(q: &Tensor, k: &Tensor, v: &Tensor, o: Option<&Tensor>) -> (Tensor, Tensor) {
    let (lse, p) = attention_probs(q, k, o);
    (lse, p.matmul(v))
}

/// Log-mass `[b, h, n]` and probabilities `[b, h, n, s]` of `q` over `k` with offset `o`.
fn attention_probs(q: &Tensor, k: &Tensor, o: Option<&Tensor>) -> (Tensor, Tensor) {
    let scale = 1.0 / (k.size()[3] as f64).sqrt();
    let mut logits = q.matmul(&k.transpose(-2, -1)) * scale;
    if let Some(o) = o {
        logits += o.unsqueeze(2);
    }
    let lse = logits.logsumexp(&[-1i64][..], false);
    if logits.requires_grad() {
        let p = (logits - lse.unsqueeze(-1)).exp();
        return (lse, p);
    }
    let _ = logits.g_sub_(&lse.unsqueeze(-1)).exp_(); // no graph to keep: reuse the buffer
    (lse, logits)
}

impl KvFitParams {
    fn reference_source(&self) -> ReferenceSource<'_> {
        ReferenceSource {
            instruction_ids: &self.instruction_ids,
            question_queries: self.question_queries,
            self_queries: self.self_queries,
            max_queries: self.max_queries,
            layer_by_layer: self.layer_by_layer,
        }
    }
}

impl KvFit {
    /// Fits one layer: `orig` the full layer, `init` its evicted starting point (same batch and
    /// heads), `refs` per-KV-head reference queries `[b, kv_heads, n, d]`. Returns the fitted
    /// layer and the loss trace.
    pub fn fit_layer(
        &self,
        orig: &LayerCache,
        init: &LayerCache,
        refs: &Tensor,
    ) -> Result<(LayerCache, FitTrace)> {
        let p = &self.params;
        let f = Kind::Float;
        let target = OutputMse::new(orig, init, refs, p.mass_weight);
        let s = init.k.size();
        let free = |x: &Tensor| x.to_kind(f).detach().copy();
        let (k, v) = (free(&init.k), free(&init.v));
        let beta = match &init.bias {
            Some(b) => free(b),
            None => Tensor::zeros([s[0], s[1], s[2]], (f, init.k.device())),
        };
        let which = [p.fit_keys, p.fit_values, p.fit_bias];
        let params: Vec<&Tensor> = [&k, &v, &beta]
            .into_iter()
            .zip(which)
            .filter_map(|(t, is_free)| is_free.then_some(t))
            .collect();
        let rule = StopRule {
            steps: p.steps,
            tol: p.tol,
            patience: p.patience,
        };
        let _g = tch::no_grad_guard();
        let mut losses = minimise_with_grads(&params, p.lr, rule, "kv_fit", || {
            let (loss, grads) = target.loss_and_grads(&k, &v, &beta);
            let picked = grads
                .into_iter()
                .zip(which)
                .filter_map(|(g, on)| on.then_some(g));
            Ok((loss, picked.collect()))
        })?;
        let last = target.forward(&k, &v, &beta);
        losses.push(last.loss.double_value(&[]));
        let rel = last.out_term.double_value(&[]).sqrt();
        let kind = orig.k.kind();
        let layer = LayerCache {
            k: k.to_kind(kind),
            v: v.to_kind(kind),
            positions: init.positions.copy(),
            keep: init.keep.as_ref().map(|m| m.copy()),
            bias: Some(beta),
        };
        Ok((
            layer,
            FitTrace {
                losses,
                rel_output_error: rel,
            },
        ))
    }
}

/// `kv_fit`'s layer objective with its gradient in closed form:
/// `L = ‖O' − O‖² / (N_O ‖O‖²_mean) + mass_weight · mean_q (lse'_q − lse_q)²` over grouped
/// reference queries `Q` `[b, h, n, d]`, for free keys `K'`, values `V'` `[b, h, t, d]` and
/// bias β `[b, h, t]`. With `P = softmax(QK'ᵀ/√d + β)`, `G_O = ∂L/∂O'` and `g_l = ∂L/∂lse'`:
/// `∂L/∂V' = Pᵀ G_O`, `∂L/∂logits = P ⊙ (G_O V'ᵀ − c + g_l)` with `c_q = G_O,q · O'_q`
/// (`= Σ_j P_qj (G_O V'ᵀ)_qj`), `∂L/∂K' = (∂L/∂logits)ᵀ Q / √d`, `∂L/∂β = Σ_q ∂L/∂logits`.
/// Four matmuls and no autograd graph per step; `tests::closed_form_gradient_equals_autograd`.
struct OutputMse {
    /// Reference queries `[b, h, n, d]` f32.
    q: Tensor,
    /// The full layer's log-mass `[b, h, n]` and output `[b, h, n, d]` on them.
    lse0: Tensor,
    out0: Tensor,
    /// Mean square of `out0` (the output term's normaliser).
    out_norm: Tensor,
    /// `-inf` where the starting layer hides a slot `[b, h, t]`.
    hidden: Option<Tensor>,
    mass_weight: f64,
}

/// One evaluation of [`OutputMse`]: probabilities `[b, h, n, t]`, outputs and their residual
/// `[b, h, n, d]`, the log-mass gap `[b, h, n]`, the loss and its output term.
struct OutputMsePass {
    probs: Tensor,
    out: Tensor,
    resid: Tensor,
    gap: Tensor,
    loss: Tensor,
    out_term: Tensor,
}

impl OutputMse {
    fn new(orig: &LayerCache, init: &LayerCache, refs: &Tensor, mass_weight: f64) -> Self {
        let _g = tch::no_grad_guard();
        let f = Kind::Float;
        let q = refs.to_kind(f);
        let off = layer_offset(orig).map(|o| o.to_kind(f));
        let (lse0, out0) = attend(&q, &orig.k.to_kind(f), &orig.v.to_kind(f), off.as_ref());
        let out_norm = out0.pow_tensor_scalar(2).mean(f).clamp_min(1e-30);
        let hidden = init.keep.as_ref().map(|m| {
            Tensor::zeros_like(&m.to_kind(f)).masked_fill(&m.logical_not(), f64::NEG_INFINITY)
        });
        OutputMse {
            q,
            lse0,
            out0,
            out_norm,
            hidden,
            mass_weight,
        }
    }

    /// The loss and its output term for `k`, `v`, `beta`, with what the gradient reuses.
    fn forward(&self, k: &Tensor, v: &Tensor, beta: &Tensor) -> OutputMsePass {
        let f = Kind::Float;
        let off = match &self.hidden {
            Some(m) => beta + m,
            None => beta.shallow_clone(),
        };
        let (lse, probs) = attention_probs(&self.q, k, Some(&off)); // probs [b, h, n, t]
        let out = probs.matmul(v);
        let resid = &out - &self.out0;
        let gap = &lse - &self.lse0;
        let out_term = resid.pow_tensor_scalar(2).mean(f) / &self.out_norm;
        let loss = &out_term + gap.pow_tensor_scalar(2).mean(f) * self.mass_weight;
        OutputMsePass {
            probs,
            out,
            resid,
            gap,
            loss,
            out_term,
        }
    }

    /// The loss and the gradients for `[k, v, beta]`.
    fn loss_and_grads(&self, k: &Tensor, v: &Tensor, beta: &Tensor) -> (Tensor, Vec<Tensor>) {
        let f = Kind::Float;
        let pass = self.forward(k, v, beta);
        let scale = 1.0 / (k.size()[3] as f64).sqrt();
        let g_out = &pass.resid * (&self.out_norm * self.out0.numel() as f64).reciprocal() * 2.0;
        let g_lse = &pass.gap * (2.0 * self.mass_weight / pass.gap.numel() as f64);
        let c = (&g_out * &pass.out).sum_dim_intlist(&[-1i64][..], false, f);
        let probs = &pass.probs;
        let dv = probs.transpose(-2, -1).matmul(&g_out);
        let dlogits = (g_out.matmul(&v.transpose(-2, -1)) + (g_lse - c).unsqueeze(-1)) * probs;
        let dk = dlogits.transpose(-2, -1).matmul(&self.q) * scale;
        let dbeta = dlogits.sum_dim_intlist(&[2i64][..], false, f);
        (pass.loss, vec![dk, dv, dbeta])
    }
}

impl KvFit {
    fn compress_kl(
        &self,
        input: &CompressionInput,
        init: &KvCache,
        start: Instant,
        init_secs: f64,
    ) -> Result<Compressed> {
        let p = &self.params;
        let dev = input.model.device();
        let ctx = input.context.to_device(dev).to_kind(Kind::Int64);
        let b = ctx.size()[0];
        let n_instr = p.instruction_ids.len() as i64;
        let mut parts = vec![];
        if n_instr > 0 {
            parts.push(
                Tensor::from_slice(&p.instruction_ids)
                    .to_device(dev)
                    .view([1, n_instr])
                    .expand([b, n_instr], false),
            );
        }
        parts.push(ctx);
        let suffix = Tensor::cat(&parts, 1);
        let u = p.kl_tokens.min(suffix.size()[1]);
        let sample = suffix.narrow(1, 0, u);
        let settings = KlSettings {
            steps: p.steps,
            lr: p.lr,
            tol: p.tol,
            patience: p.patience,
            fit_keys: p.fit_keys,
            fit_values: p.fit_values,
            fit_bias: p.fit_bias,
        };
        let (cache, losses) = fit_kl(input.model, input.cache, init, &sample, &settings)?;
        let secs = start.elapsed().as_secs_f64();
        let n = input.cache.layers.len() as f64;
        Ok(Compressed {
            cache,
            extra: vec![
                ("fit_seconds".into(), secs),
                ("fit_init_seconds".into(), init_secs),
                ("fit_seconds_per_layer".into(), (secs - init_secs) / n),
                (
                    "fit_initial_loss".into(),
                    losses.first().copied().unwrap_or(0.0),
                ),
                (
                    "fit_final_loss".into(),
                    losses.last().copied().unwrap_or(0.0),
                ),
                ("fit_steps".into(), (losses.len() - 1) as f64),
            ],
        })
    }
}

impl Compressor for KvFit {
    fn name(&self) -> &'static str {
        "kv_fit"
    }
    fn params(&self) -> toml::Table {
        to_table(&self.params)
    }
    /// Optimisation needs autograd even when the caller evaluates under `no_grad`
    /// (as the evaluation loop does), so gradients are switched on for the whole fit.
    fn compress(&self, input: &CompressionInput) -> Result<Compressed> {
        tch::with_grad(|| self.fit(input))
    }
}

impl KvFit {
    fn fit(&self, input: &CompressionInput) -> Result<Compressed> {
        let start = Instant::now();
        let cache = input.cache;
        if input.kept_slots("kv_fit")?.is_none() {
            return Ok(Compressed::unchanged(cache));
        }
        let init = self.init.compress(input)?.cache;
        if init.layers.len() != cache.layers.len() {
            return Err(Error::invalid(format!(
                "kv_fit: init compressor `{}` returned {} layers, expected {}",
                self.params.init,
                init.layers.len(),
                cache.layers.len()
            )));
        }
        let init_secs = start.elapsed().as_secs_f64();
        if self.params.objective == Objective::NextTokenKl {
            return self.compress_kl(input, &init, start, init_secs);
        }
        let (mut first, mut last, mut rel, mut steps) = (0.0, 0.0, 0.0, 0.0);
        let layers = fit_layers(input, &self.params.reference_source(), |i, orig, refs| {
            let (fitted, trace) = self.fit_layer(orig, &init.layers[i], refs)?;
            first += trace.losses.first().copied().unwrap_or(0.0);
            last += trace.losses.last().copied().unwrap_or(0.0);
            rel += trace.rel_output_error;
            steps += (trace.losses.len() - 1) as f64;
            Ok(fitted)
        })?;
        let n = cache.layers.len() as f64;
        let secs = start.elapsed().as_secs_f64();
        Ok(Compressed {
            cache: KvCache {
                layers,
                seq_len: cache.seq_len,
            },
            extra: vec![
                ("fit_seconds".into(), secs),
                ("fit_init_seconds".into(), init_secs),
                ("fit_seconds_per_layer".into(), (secs - init_secs) / n),
                ("fit_initial_loss".into(), first / n),
                ("fit_final_loss".into(), last / n),
                ("fit_rel_output_error".into(), rel / n),
                ("fit_steps".into(), steps / n),
            ],
        })
    }
}

impl KvFit {
    /// Validates `params` and builds the `init` compressor from the registry.
    pub fn new(params: KvFitParams) -> Result<Self> {
        let bad = |reason: String| Error::Params {
            kind: "compressor",
            name: "kv_fit".into(),
            reason,
        };
        let bad_float = |x: f64, min: f64| x.is_nan() || x < min;
        if bad_float(params.lr, f64::MIN_POSITIVE)
            || bad_float(params.tol, 0.0)
            || bad_float(params.mass_weight, 0.0)
        {
            return Err(bad(format!(
                "lr must be > 0, tol and mass_weight ≥ 0 (got lr {}, tol {}, mass_weight {})",
                params.lr, params.tol, params.mass_weight
            )));
        }
        if params.max_queries < 0 || params.patience == 0 || params.kl_tokens < 1 {
            return Err(bad(
                "max_queries must be ≥ 0, patience ≥ 1 and kl_tokens ≥ 1".into(),
            ));
        }
        if params.init == "kv_fit" {
            return Err(bad(
                "init must be an eviction compressor, not kv_fit itself".into(),
            ));
        }
        let init = build_compressor(&params.init, &params.init_params)?;
        Ok(KvFit { params, init })
    }
}

fn build(table: &toml::Table) -> Result<Box<dyn Compressor>> {
    let params: KvFitParams = parse_params("compressor", "kv_fit", table)?;
    Ok(Box::new(KvFit::new(params)?))
}

inventory::submit! {
    CompressorDescriptor {
        name: "kv_fit",
        description: "gradient-based KV fitting: free k, v, β from an eviction init, Adam on attention-output MSE",
        defaults: || to_table(&KvFitParams::default()),
        build,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    /// The closed-form loss and gradients of `OutputMse` equal autograd's on the same loss,
    /// with a hidden slot in one head.
    #[test]
    fn closed_form_gradient_equals_autograd() {
        tch::manual_seed(9);
        let opts = (Kind::Float, tch::Device::Cpu);
        let (b, h, n, s, t, d) = (1, 2, 12, 20, 6, 8);
        let full = LayerCache {
            k: Tensor::randn([b, h, s, d], opts),
            v: Tensor::randn([b, h, s, d], opts),
            positions: Tensor::zeros([b, h, s], (Kind::Int64, tch::Device::Cpu)),
            keep: None,
            bias: None,
        };
        let keep = Tensor::ones([b, h, t], (Kind::Bool, tch::Device::Cpu)).index_fill(
            2,
            &Tensor::from_slice(&[2i64]),
            0,
        );
        let init = LayerCache {
            keep: Some(keep),
            ..full
                .gather(&Tensor::arange(t, (Kind::Int64, tch::Device::Cpu)).expand([b, h, t], true))
        };
        let refs = Tensor::randn([b, h, n, d], opts);
        let target = OutputMse::new(&full, &init, &refs, 0.3);
        let k = init.k.copy().set_requires_grad(true);
        let v = init.v.copy().set_requires_grad(true);
        let beta = (Tensor::randn([b, h, t], opts) * 0.1).set_requires_grad(true);
        let (loss, grads) = tch::no_grad(|| target.loss_and_grads(&k, &v, &beta));
        // The same loss through autograd.
        let off = &beta + target.hidden.as_ref().unwrap();
        let (lse, out) = attend(&target.q, &k, &v, Some(&off));
        let auto = (&out - &target.out0).pow_tensor_scalar(2).mean(Kind::Float) / &target.out_norm
            + (lse - &target.lse0).pow_tensor_scalar(2).mean(Kind::Float) * 0.3;
        let want = Tensor::run_backward(&[&auto], &[&k, &v, &beta], false, false);
        let close = |a: &Tensor, b: &Tensor| {
            let scale = b.abs().max().double_value(&[]).max(1e-12);
            (a - b).abs().max().double_value(&[]) / scale
        };
        assert!(close(&loss, &auto.detach()) < 1e-6);
        for (name, got, want) in [("k", &grads[0], &want[0]), ("v", &grads[1], &want[1])] {
            assert!(close(got, want) < 1e-5, "d{name}: {}", close(got, want));
        }
        assert!(
            close(&grads[2], &want[2]) < 1e-5,
            "dβ: {}",
            close(&grads[2], &want[2])
        );
        assert_eq!(
            grads[2].double_value(&[0, 0, 2]),
            0.0,
            "a hidden slot gets no gradient"
        );
    }
}
