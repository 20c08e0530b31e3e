//! `attention_matching`: keeps, per layer and KV head, the prefix slots whose re-weighted
//! attention best reproduces the continuation queries' attention over the whole prefix —
//! the key-selection step of attention-matching KV compaction (Zweiger et al., 2026,
//! "Fast KV Compaction via Attention Matching"), used here as a train-time policy so that a
//! model is trained for the fitting compressor it will meet.
//!
//! Not to be confused with the inference-time *compressor* of the same registry name
//! (`kvcat_compressors::fitting::attention_matching`), the same paper's full compaction:
//! it also fits the kept slots' bias β and values. This policy only selects (a mask).
//!
//! # Method
//! For one KV head, let `Q` be `n` reference queries (the teacher's continuation queries of
//! the head's query group, subsampled to at most `max_queries` per head), `K`, `V` the prefix
//! keys and values (`[P, d]`), and `A[q, j] = exp(q·k_j/√d − max_j q·k_j)` (`[n, P]`). With
//! non-negative slot weights `w` (`w_j = e^{β_j}`, the per-slot log-mass bias of the
//! compressed cache), a subset `S` reproduces
//! - the attention *mass* of each query: `Σ_{j∈S} w_j A[q, j] ≈ Σ_j A[q, j]`, and
//! - the unnormalised attention *output*: `Σ_{j∈S} w_j A[q, j] v_j ≈ Σ_j A[q, j] v_j`,
//!
//! hence the normalised output too. Stacking both targets gives a least-squares problem
//! `X w ≈ X 1` with `X` `[n(1+d), P]`. Orthogonal matching pursuit picks `S` greedily: at
//! each step the slot most correlated with the residual joins, and `w` is re-fitted on `S`
//! (ridge-regularised least squares clipped at zero, a cheap stand-in for NNLS). Everything
//! goes through the Gram matrix `XᵀX = (AᵀA) ⊙ (1 + V̂V̂ᵀ)` (`V̂` = values scaled to unit RMS
//! times `value_weight`), so `X` is never built: `[P, P]` per head.
//!
//! With `beta_bias = true` the fitted `log w` is applied to kept slots as a (constant) soft
//! bias, as the fitting compressor's β does at inference; values are not re-fitted.
//!
//! Shapes: queries `[b, heads, T, d]` and keys/values `[b, kv_heads, T, d]` from the teacher;
//! masks `[b, kv_heads, P]`.

use crate::util::{check_input, teacher_queries};
use kvcat_core::registry::to_table;
use kvcat_core::{Error, MaskPlan, MaskingPolicy, PolicyInput, PolicyNeeds, Result};
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// Parameters of `attention_matching`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttentionMatchingParams {
    /// Reference continuation queries per query head (evenly spaced over the continuation).
    pub max_queries: i64,
    /// Weight of the output-matching rows relative to the mass rows (0: mass only).
    pub value_weight: f64,
    /// Ridge term, relative to the mean diagonal of the selected Gram block.
    pub ridge: f64,
    /// Apply the fitted log-weights β = log w to kept slots as an additive bias.
    pub beta_bias: bool,
}

impl Default for AttentionMatchingParams {
    fn default() -> Self {
        AttentionMatchingParams {
            max_queries: 32,
            value_weight: 1.0,
            ridge: 1e-4,
            beta_bias: false,
        }
    }
}

/// The old name of [`gram_omp_select`].
#[deprecated(note = "renamed to `gram_omp_select`")]
pub fn omp_select(gram: &Tensor, kept: i64, ridge: f64) -> (Tensor, Tensor) {
    gram_omp_select(gram, kept, ridge)
}

/// OMP-based attention-matching selection.
pub struct AttentionMatchingPolicy {
    params: AttentionMatchingParams,
}

/// Greedy OMP over Gram matrices `gram` `[N, P, P]` (mass and output targets together, one
/// per head) for targets `Xᵀy = gram·1`, refitting `w` by clipped ridge least squares.
/// Returns the selected mask `[N, P]` (bool, `kept` per row) and weights `[N, P]` (0 off `S`).
/// (The `attention_matching` *compressor* selects keys by its own OMP on one head's mass
/// system with NNLS refits, in `kvcat_compressors::fitting::compact`.)
pub fn gram_omp_select(gram: &Tensor, kept: i64, ridge: f64) -> (Tensor, Tensor) {
    let s = gram.size();
    let (n, p) = (s[0], s[1]);
    let device = gram.device();
    let kind = gram.kind();
    let c = gram.sum_dim_intlist(-1, false, kind); // [N, P]
    let norms = gram.diagonal(0, -2, -1).clamp_min(1e-30).sqrt(); // [N, P]
    let mut selected = Tensor::zeros([n, p], (Kind::Bool, device));
    let mut idx = Tensor::zeros([n, 0], (Kind::Int64, device));
    let mut w = Tensor::zeros([n, 0], (kind, device));
    for step in 0..kept.min(p) {
        let corr = if step == 0 {
            c.shallow_clone()
        } else {
            let g_cols = gram.gather(2, &idx.unsqueeze(1).expand([n, p, step], false), false);
            &c - g_cols.matmul(&w.unsqueeze(-1)).squeeze_dim(-1)
        };
        let score = (corr / &norms).masked_fill(&selected, f64::NEG_INFINITY);
        let j = score.argmax(-1, true); // [N, 1]
        selected = selected.scatter_value(1, &j, 1);
        idx = Tensor::cat(&[&idx, &j], 1);
        let k = step + 1;
        let rows = gram.gather(1, &idx.unsqueeze(-1).expand([n, k, p], false), false);
        let g_ss = rows.gather(2, &idx.unsqueeze(1).expand([n, k, k], false), false);
        let c_s = c.gather(1, &idx, false);
        let scale = g_ss
            .diagonal(0, -2, -1)
            .mean_dim(-1, true, kind)
            .clamp_min(1e-30);
        let eye = Tensor::eye(k, (kind, device)).unsqueeze(0);
        let lhs = g_ss + eye * (scale.unsqueeze(-1) * ridge);
        // Cholesky, not `linalg_solve`: batched LU is broken on multi-threaded CPUs
        // (`kvcat_core::spd`); a positive ridge keeps `lhs` positive definite.
        let l = lhs.linalg_cholesky(false);
        w = c_s
            .unsqueeze(-1)
            .cholesky_solve(&l, false)
            .squeeze_dim(-1)
            .clamp_min(0.0);
    }
    let weights = Tensor::zeros([n, p], (kind, device)).scatter(1, &idx, &w);
    (selected, weights)
}

impl AttentionMatchingPolicy {
    /// Gram matrices `[b·kv_heads, P, P]` of one layer.
    fn layer_gram(&self, q: &Tensor, k: &Tensor, v: &Tensor, p: i64, kind: Kind) -> Tensor {
        let (b, heads, t, d) = (q.size()[0], q.size()[1], q.size()[2], q.size()[3]);
        let kv = k.size()[1];
        let g = heads / kv;
        let c = t - p;
        let nq = self.params.max_queries.clamp(1, c);
        let picks: Vec<i64> = (0..nq)
            .map(|i| {
                p + if nq == 1 {
                    c - 1
                } else {
                    i * (c - 1) / (nq - 1)
                }
            })
            .collect();
        let pick = Tensor::from_slice(&picks).to_device(q.device());
        let qs = q.index_select(2, &pick).to_kind(kind); // [b, H, nq, d]
        let qs = qs.reshape([b * kv, g * nq, d]);
        let kp = k.narrow(2, 0, p).to_kind(kind).reshape([b * kv, p, d]);
        let vp = v.narrow(2, 0, p).to_kind(kind).reshape([b * kv, p, d]);
        let logits = qs.matmul(&kp.transpose(-2, -1)) / (d as f64).sqrt(); // [N, n, P]
        let (mx, _) = logits.max_dim(-1, true);
        let a = (logits - mx).exp();
        let ata = a.transpose(-2, -1).matmul(&a); // [N, P, P]
        let rms = vp
            .pow_tensor_scalar(2)
            .mean_dim(&[-2i64, -1][..], true, kind)
            .clamp_min(1e-12)
            .sqrt();
        let vn = vp / rms * self.params.value_weight;
        let vv = vn.matmul(&vn.transpose(-2, -1));
        ata * (vv + 1.0)
    }
}

impl MaskingPolicy for AttentionMatchingPolicy {
    fn name(&self) -> &'static str {
        "attention_matching"
    }
    fn params(&self) -> toml::Table {
        to_table(&self.params)
    }
    fn needs(&self) -> PolicyNeeds {
        PolicyNeeds {
            queries: true,
            ..Default::default()
        }
    }
    fn plan(&mut self, input: &PolicyInput, _rng: &mut StdRng) -> Result<MaskPlan> {
        let (b, _, p) = check_input(input)?;
        let _g = tch::no_grad_guard();
        let cfg = &input.model.config;
        let kv = cfg.num_key_value_heads;
        let device = input.model.device();
        let kind = if device == Device::Cpu {
            Kind::Double
        } else {
            Kind::Float
        };
        let mut keep = Vec::new();
        let mut bias = Vec::new();
        for layer in 0..cfg.num_hidden_layers as usize {
            let q = teacher_queries(input, layer, "attention_matching")?;
            let lc = input.cache.layers.get(layer).ok_or_else(|| {
                Error::invalid(format!(
                    "attention_matching: teacher cache lacks layer {layer}"
                ))
            })?;
            let gram = self.layer_gram(q, &lc.k, &lc.v, p, kind);
            let (sel, w) = gram_omp_select(&gram, input.kept, self.params.ridge);
            keep.push(sel.view([b, kv, p]));
            if self.params.beta_bias {
                let beta = w
                    .clamp_min(1e-6)
                    .log()
                    .to_kind(Kind::Float)
                    .view([b, kv, p]);
                bias.push(beta);
            }
        }
        Ok(MaskPlan {
            prefix_len: p,
            kept: input.kept,
            keep,
            soft_bias: self.params.beta_bias.then_some(bias),
            summary: None,
        })
    }
}

/// Checks the parameters and builds the policy.
fn build(params: AttentionMatchingParams) -> Result<AttentionMatchingPolicy> {
    let bad = |field: &str, v: String| Error::Params {
        kind: "policy",
        name: "attention_matching".into(),
        reason: format!("field `{field}` {v}"),
    };
    if params.max_queries < 1 {
        return Err(bad(
            "max_queries",
            format!("must be >= 1, got {}", params.max_queries),
        ));
    }
    if !(params.value_weight >= 0.0 && params.value_weight.is_finite()) {
        return Err(bad(
            "value_weight",
            format!("must be >= 0, got {}", params.value_weight),
        ));
    }
    if !(params.ridge > 0.0 && params.ridge.is_finite()) {
        return Err(bad("ridge", format!("must be > 0, got {}", params.ridge)));
    }
    Ok(AttentionMatchingPolicy { params })
}

kvcat_core::register!(
    dyn MaskingPolicy,
    "attention_matching",
    "OMP selection of the prefix slots that best reproduce the continuation queries' attention mass and output (Zweiger et al. 2026)",
    AttentionMatchingParams,
    |params| build(params)
);
