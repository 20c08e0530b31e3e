//! `router`: a small learned scorer per layer that rates each prefix slot for each KV head;
//! the top-`kept` slots are kept. Trained jointly with the model through a differentiable
//! relaxation of top-k.
//!
//! # Scorer
//! - `input = "keys"`: `s[b, h, j] = (k_j · w_h)/√d + c_h` on the teacher's post-RoPE prefix
//!   keys `[b, kv_heads, P, d]`; parameters `weight` `[kv_heads, d]`, `bias` `[kv_heads]`.
//! - `input = "hidden"`: `s[b, :, j] = W x_j + c` on the layer's input hidden states
//!   `[b, P, hidden]`; parameters `weight` `[kv_heads, hidden]`, `bias` `[kv_heads]`.
//!
//! Inputs are detached: only the router's own parameters learn from its scores.
//!
//! # Relaxation
//! The hard mask keeps the top-`kept` scores (optionally perturbed by Gumbel noise of scale
//! `gumbel` for exploration). Gradient reaches the scores through a log-utility attention bias
//! `log σ(s/τ)` on the kept slots, in the spirit of learned KV eviction with a soft
//! log-utility gate:
//! - `relaxation = "straight_through"` (default) adds `log σ(s/τ) − stopgrad(log σ(s/τ))`:
//!   the forward pass is exactly the hard mask a post-hoc top-k compressor applies, the
//!   backward pass is that of the log-utility bias;
//! - `relaxation = "log_utility"` adds `log σ(s/τ)` itself, so kept slots are also
//!   re-weighted in the forward pass.
//!
//! `budget_reg > 0` adds `budget_reg · mean_layers (mean σ(s/τ) − kept/P)²`, which keeps the
//! gate calibrated to the sampled budget.
//!
//! Parameters live under the path the trainer passes to [`MaskingPolicy::init`] — the
//! trainer gives policies their own `VarStore` group, saved as `policy.safetensors`.

use crate::util::{check_input, topk_mask};
use kvcat_core::registry::to_table;
use kvcat_core::{Error, LlamaConfig, MaskPlan, MaskingPolicy, PolicyInput, PolicyNeeds, Result};
use rand::rngs::StdRng;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tch::nn::{self, Init};
use tch::{Kind, Tensor};

/// What the router scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouterInput {
    /// The layer's post-RoPE prefix keys.
    #[default]
    Keys,
    /// The layer's input hidden states at prefix positions.
    Hidden,
}

/// How gradient reaches the scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Relaxation {
    /// Hard mask forward; log-utility gradient backward.
    #[default]
    StraightThrough,
    /// Hard mask plus a `log σ(s/τ)` bias on kept slots, forward and backward.
    LogUtility,
}

/// Parameters of `router`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterParams {
    pub input: RouterInput,
    pub relaxation: Relaxation,
    /// Temperature τ of the gate `σ(s/τ)`.
    pub temperature: f64,
    /// Weight of the budget regulariser (0: off).
    pub budget_reg: f64,
    /// Scale of Gumbel noise added to the scores when choosing the hard top-k (0: none).
    pub gumbel: f64,
}

impl Default for RouterParams {
    fn default() -> Self {
        RouterParams {
            input: RouterInput::Keys,
            relaxation: Relaxation::StraightThrough,
            temperature: 1.0,
            budget_reg: 0.0,
            gumbel: 0.0,
        }
    }
}

/// One layer's scorer parameters.
struct LayerScorer {
    weight: Tensor,
    bias: Tensor,
}

/// The learned router policy.
pub struct RouterPolicy {
    params: RouterParams,
    layers: Vec<LayerScorer>,
    last_reg: Option<Tensor>,
}

impl RouterPolicy {
    /// Scores `[b, kv_heads, P]` of layer `l`, with gradient into the router parameters.
    fn scores(&self, input: &PolicyInput, l: usize, p: i64) -> Result<Tensor> {
        let sc = &self.layers[l];
        let kv = sc.weight.size()[0];
        match self.params.input {
            RouterInput::Keys => {
                let k = &input
                    .cache
                    .layers
                    .get(l)
                    .ok_or_else(|| {
                        Error::invalid(format!("router: teacher cache lacks layer {l}"))
                    })?
                    .k;
                let d = k.size()[3];
                let kp = k.narrow(2, 0, p).detach().to_kind(sc.weight.kind());
                let s =
                    kp.matmul(&sc.weight.view([1, kv, d, 1])).squeeze_dim(-1) / (d as f64).sqrt();
                Ok(s + sc.bias.view([1, kv, 1]))
            }
            RouterInput::Hidden => {
                let h = input.teacher.hidden.get(l).ok_or_else(|| {
                    Error::invalid(format!(
                        "router: needs the teacher's captured hidden states (layer {l} missing)"
                    ))
                })?;
                let hp = h.narrow(1, 0, p).detach().to_kind(sc.weight.kind());
                let s = hp.matmul(&sc.weight.tr()) + &sc.bias; // [b, P, kv]
                Ok(s.transpose(1, 2))
            }
        }
    }
}

impl MaskingPolicy for RouterPolicy {
    fn name(&self) -> &'static str {
        "router"
    }
    fn params(&self) -> toml::Table {
        to_table(&self.params)
    }
    fn needs(&self) -> PolicyNeeds {
        PolicyNeeds {
            hidden: self.params.input == RouterInput::Hidden,
            ..Default::default()
        }
    }
    fn init(&mut self, root: &nn::Path, cfg: &LlamaConfig) -> Result<()> {
        let in_dim = match self.params.input {
            RouterInput::Keys => cfg.head_dim,
            RouterInput::Hidden => cfg.hidden_size,
        };
        let kv = cfg.num_key_value_heads;
        self.layers = (0..cfg.num_hidden_layers)
            .map(|l| {
                let p = root / "layers" / l;
                LayerScorer {
                    weight: p.var(
                        "weight",
                        &[kv, in_dim],
                        Init::Randn {
                            mean: 0.0,
                            stdev: 1.0 / (in_dim as f64).sqrt(),
                        },
                    ),
                    bias: p.var("bias", &[kv], Init::Const(0.0)),
                }
            })
            .collect();
        Ok(())
    }
    fn plan(&mut self, input: &PolicyInput, rng: &mut StdRng) -> Result<MaskPlan> {
        let (_, _, p) = check_input(input)?;
        let n_layers = input.model.config.num_hidden_layers as usize;
        if self.layers.len() != n_layers {
            return Err(Error::invalid(format!(
                "router: initialised for {} layers, model has {n_layers} (call init first)",
                self.layers.len()
            )));
        }
        let tau = self.params.temperature;
        let target = input.kept as f64 / p as f64;
        let mut keep = Vec::with_capacity(n_layers);
        let mut bias = Vec::with_capacity(n_layers);
        let mut reg: Option<Tensor> = None;
        for l in 0..n_layers {
            let s = self.scores(input, l, p)?; // [b, kv, P]
            let mut pick = s.detach();
            if self.params.gumbel > 0.0 {
                let n = pick.numel();
                let g: Vec<f32> = (0..n)
                    .map(|_| {
                        let u: f64 = rng.random_range(1e-12..1.0);
                        (-(-u.ln()).ln()) as f32
                    })
                    .collect();
                let noise = Tensor::from_slice(&g)
                    .view(pick.size().as_slice())
                    .to_device(pick.device())
                    .to_kind(pick.kind());
                pick += noise * self.params.gumbel;
            }
            keep.push(topk_mask(&pick, input.kept));
            let ls = (&s / tau).log_sigmoid();
            bias.push(match self.params.relaxation {
                Relaxation::StraightThrough => &ls - ls.detach(),
                Relaxation::LogUtility => ls,
            });
            if self.params.budget_reg > 0.0 {
                let gap = (&s / tau).sigmoid().mean(Kind::Float) - target;
                let term = gap.pow_tensor_scalar(2) / n_layers as f64;
                reg = Some(match reg {
                    Some(r) => r + term,
                    None => term,
                });
            }
        }
        self.last_reg = reg.map(|r| r * self.params.budget_reg);
        Ok(MaskPlan {
            prefix_len: p,
            kept: input.kept,
            keep,
            soft_bias: Some(bias),
            summary: None,
        })
    }
    fn regularizer(&self) -> Option<Tensor> {
        self.last_reg.as_ref().map(|t| t.shallow_clone())
    }
}

/// Checks the parameters and builds the policy.
fn build(params: RouterParams) -> Result<RouterPolicy> {
    let bad = |field: &str, v: String| Error::Params {
        kind: "policy",
        name: "router".into(),
        reason: format!("field `{field}` {v}"),
    };
    if !(params.temperature > 0.0 && params.temperature.is_finite()) {
        return Err(bad(
            "temperature",
            format!("must be > 0, got {}", params.temperature),
        ));
    }
    if !(params.budget_reg >= 0.0 && params.budget_reg.is_finite()) {
        return Err(bad(
            "budget_reg",
            format!("must be >= 0, got {}", params.budget_reg),
        ));
    }
    if !(params.gumbel >= 0.0 && params.gumbel.is_finite()) {
        return Err(bad(
            "gumbel",
            format!("must be >= 0, got {}", params.gumbel),
        ));
    }
    Ok(RouterPolicy {
        params,
        layers: Vec::new(),
        last_reg: None,
    })
}

kvcat_core::register!(
    dyn MaskingPolicy,
    "router",
    "learned per-layer scorer on keys or hidden states; top-b with a straight-through log-utility relaxation",
    RouterParams,
    |params| build(params)
);
