//! The Llama-family decoder (RMSNorm, RoPE, GQA, SwiGLU, tied or untied embeddings).
//!
//! Modules are named like the HF checkpoint tensors (`model.layers.{i}.self_attn.q_proj`),
//! so a `VarStore` loads HF safetensors directly and compressors can reach attention by name.
//! The KV cache is owned by the caller: `forward(tokens, &mut KvCache)`.

use crate::attention::Attention;
use crate::cache::KvCache;
use crate::config::LlamaConfig;
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::sync::Mutex;
use tch::nn::{self, Init};
use tch::{Kind, Tensor};

/// Which logits a forward pass computes (the LM head is the largest matmul for small models).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Logits {
    /// `[b, t, vocab]`.
    #[default]
    All,
    /// `[b, 1, vocab]`, for the last position only.
    Last,
    /// No logits (prefill only).
    None,
}

/// Optional inputs and captures of a forward pass.
#[derive(Default)]
pub struct ForwardOptions<'a> {
    /// Per-layer additive attention bias over this call's keys (cache slots, then the new
    /// tokens): `[b, kv_heads | heads | 1, t, slots + t]`. KV-CAT training masks continuation
    /// queries with it; `-inf` hides a key, finite values re-weight it (and carry gradient).
    pub layer_bias: Option<&'a [Tensor]>,
    /// Capture post-RoPE queries `[b, heads, t, head_dim]` per layer.
    pub capture_queries: bool,
    /// Capture attention probabilities `[b, heads, t, slots + t]` per layer (slower path).
    pub capture_attention: bool,
    /// Capture each layer's input hidden states `[b, t, hidden]` (index `num_layers` is the
    /// final pre-norm output).
    pub capture_hidden: bool,
    /// Which logits to compute.
    pub logits: Logits,
}

/// What a forward pass returns. Capture vectors are empty unless requested.
#[derive(Debug, Default)]
pub struct ForwardOutput {
    /// Logits in the model dtype, per [`Logits`].
    pub logits: Option<Tensor>,
    pub queries: Vec<Tensor>,
    pub attention: Vec<Tensor>,
    pub hidden: Vec<Tensor>,
}

/// Root-mean-square layer norm, computed in f32 as HF does.
#[derive(Debug)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
}

impl RmsNorm {
    pub fn new(p: &nn::Path, dim: i64, eps: f64) -> Self {
        RmsNorm {
            weight: p.var("weight", &[dim], Init::Const(1.0)),
            eps,
        }
    }
    /// `x`: `[.., dim]` → same shape and dtype.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let xf = x.to_kind(Kind::Float);
        let var = xf.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        let normed = (xf * (var + self.eps).rsqrt()).to_kind(kind);
        &self.weight * normed
    }
}

/// A bias-free linear map `y = x Wᵀ` with `W`: `[out, in]`, as in HF's `nn.Linear(bias=False)`.
#[derive(Debug)]
pub struct Linear {
    pub weight: Tensor,
}

/// How freshly declared weight matrices are filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightInit {
    /// N(0, 0.02), as HF initialises Llama (for training from scratch).
    Random,
    /// Zeros, for variables a checkpoint overwrites right away (skips the random draw,
    /// which dominates load time for small models).
    ForLoading,
}

impl WeightInit {
    fn init(self) -> Init {
        match self {
            WeightInit::Random => Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
            WeightInit::ForLoading => Init::Const(0.0),
        }
    }
}

impl Linear {
    pub fn new(p: &nn::Path, in_dim: i64, out_dim: i64, init: WeightInit) -> Self {
        Linear {
            weight: p.var("weight", &[out_dim, in_dim], init.init()),
        }
    }
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.matmul(&self.weight.tr())
    }
}

/// Whether a forward through `weight` records autograd history (grad mode on and the weight
/// trainable). A view made under `no_grad` does not require grad, so this reads the grad mode
/// without a private API.
pub fn records_grad(weight: &Tensor) -> bool {
    weight.requires_grad() && weight.narrow(0, 0, 1).requires_grad()
}

/// Several `[out_i, in]` weight matrices concatenated along `out` for one matmul instead of
/// several (fused QKV and gate–up projections). The concatenation is cached and rebuilt when
/// any part is updated in place or re-allocated (its autograd version or data pointer changes),
/// so optimiser steps and checkpoint loads are never missed. Used only when no gradient is
/// recorded; training keeps the separate leaf matmuls. Costs one extra copy of the fused weights.
#[derive(Debug, Default)]
pub struct FusedWeight {
    cached: Mutex<Option<(Vec<(i64, usize)>, Tensor)>>,
}

impl FusedWeight {
    /// `cat(parts, 0)`: `[Σ out_i, in]`, from the cache when no part has changed.
    pub fn get(&self, parts: &[&Tensor]) -> Tensor {
        let key: Vec<(i64, usize)> = parts
            .iter()
            .map(|w| (w.internal_version(), w.data_ptr() as usize))
            .collect();
        let mut slot = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((k, w)) = slot.as_ref() {
            if *k == key {
                return w.shallow_clone();
            }
        }
        let fused = tch::no_grad(|| Tensor::cat(parts, 0));
        *slot = Some((key, fused.shallow_clone()));
        fused
    }
}

/// SwiGLU feed-forward: `down(silu(gate(x)) · up(x))`.
#[derive(Debug)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
    /// `[gate; up]` `[2·intermediate, hidden]` for inference (one matmul).
    pub gate_up: FusedWeight,
}

impl Mlp {
    pub fn new(p: &nn::Path, cfg: &LlamaConfig, init: WeightInit) -> Self {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Mlp {
            gate_proj: Linear::new(&(p / "gate_proj"), h, i, init),
            up_proj: Linear::new(&(p / "up_proj"), h, i, init),
            down_proj: Linear::new(&(p / "down_proj"), i, h, init),
            gate_up: FusedWeight::default(),
        }
    }
    /// `x` `[.., hidden]` → `[.., hidden]`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let (gate, up) = (&self.gate_proj.weight, &self.up_proj.weight);
        let hidden = if records_grad(gate) || records_grad(up) {
            self.gate_proj.forward(x).silu() * self.up_proj.forward(x)
        } else {
            let both = x.matmul(&self.gate_up.get(&[gate, up]).tr());
            let halves = both.chunk(2, -1);
            halves[0].silu() * &halves[1]
        };
        self.down_proj.forward(&hidden)
    }
}

/// One pre-norm decoder block.
#[derive(Debug)]
pub struct DecoderLayer {
    pub self_attn: Attention,
    pub mlp: Mlp,
    pub input_layernorm: RmsNorm,
    pub post_attention_layernorm: RmsNorm,
}

/// The decoder. Field names follow the HF tensor names.
#[derive(Debug)]
pub struct Llama {
    pub config: LlamaConfig,
    pub embed_tokens: Tensor,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
    /// `None` when embeddings are tied.
    pub lm_head: Option<Linear>,
    /// Tensors a train-time policy learned beside the model (a checkpoint's
    /// `policy.safetensors`, e.g. the `gist` policy's summary embeddings), for the compressor
    /// paired with that policy. Empty for a model without them.
    pub learned: BTreeMap<String, Tensor>,
}

impl Llama {
    /// Declares every variable under `root` with HF names (`model.…`, `lm_head.weight`).
    /// Fresh variables get N(0, 0.02) init and norms 1 (for training from scratch).
    pub fn new(root: &nn::Path, cfg: &LlamaConfig) -> Self {
        Self::with_init(root, cfg, WeightInit::Random)
    }

    /// Declares the variables for a loader that fills every one of them from a checkpoint.
    pub fn for_loading(root: &nn::Path, cfg: &LlamaConfig) -> Self {
        Self::with_init(root, cfg, WeightInit::ForLoading)
    }

    /// Declares every variable under `root` with HF names, filled per `init`.
    pub fn with_init(root: &nn::Path, cfg: &LlamaConfig, init: WeightInit) -> Self {
        let m = root / "model";
        let embed_tokens =
            (&m / "embed_tokens").var("weight", &[cfg.vocab_size, cfg.hidden_size], init.init());
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let lp = &m / "layers" / i;
                DecoderLayer {
                    self_attn: Attention::new(&(&lp / "self_attn"), cfg, init),
                    mlp: Mlp::new(&(&lp / "mlp"), cfg, init),
                    input_layernorm: RmsNorm::new(
                        &(&lp / "input_layernorm"),
                        cfg.hidden_size,
                        cfg.rms_norm_eps,
                    ),
                    post_attention_layernorm: RmsNorm::new(
                        &(&lp / "post_attention_layernorm"),
                        cfg.hidden_size,
                        cfg.rms_norm_eps,
                    ),
                }
            })
            .collect();
        let norm = RmsNorm::new(&(&m / "norm"), cfg.hidden_size, cfg.rms_norm_eps);
        let lm_head = (!cfg.tie_word_embeddings)
            .then(|| Linear::new(&(root / "lm_head"), cfg.hidden_size, cfg.vocab_size, init));
        Llama {
            config: cfg.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            learned: BTreeMap::new(),
        }
    }

    /// The compute dtype (that of the embeddings).
    pub fn kind(&self) -> Kind {
        self.embed_tokens.kind()
    }

    /// The device the weights live on.
    pub fn device(&self) -> tch::Device {
        self.embed_tokens.device()
    }

    /// Checks token ids `[b, t]` against the vocabulary.
    pub fn check_tokens(&self, tokens: &Tensor) -> Result<()> {
        if tokens.numel() == 0 {
            return Err(Error::invalid("empty token sequence"));
        }
        let flat = tokens.flatten(0, -1).to_kind(Kind::Int64);
        let (min, max) = (flat.min().int64_value(&[]), flat.max().int64_value(&[]));
        let vocab = self.config.vocab_size;
        if min < 0 || max >= vocab {
            let bad = flat.lt(0).logical_or(&flat.ge(vocab));
            let index = bad.to_kind(Kind::Int64).argmax(0, false).int64_value(&[]);
            let id = flat.int64_value(&[index]);
            return Err(Error::TokenOutOfRange { id, index, vocab });
        }
        Ok(())
    }

    /// Logits for `tokens` `[b, t]`, appending their keys and values to `cache`.
    /// Returns `[b, t, vocab]` in the model dtype.
    pub fn forward(&self, tokens: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let out = self.forward_with(tokens, cache, &ForwardOptions::default())?;
        out.logits
            .ok_or_else(|| Error::invalid("forward computed no logits"))
    }

    /// The general forward pass: `tokens` `[b, t]` int64 at positions
    /// `cache.seq_len .. cache.seq_len + t`, appended to `cache`.
    pub fn forward_with(
        &self,
        tokens: &Tensor,
        cache: &mut KvCache,
        opts: &ForwardOptions,
    ) -> Result<ForwardOutput> {
        let t = tokens.size().last().copied().unwrap_or(0);
        let max = self.config.max_position_embeddings;
        if cache.seq_len + t > max {
            crate::loading::warn_once(&format!(
                "a sequence runs past the model's max_position_embeddings = {max} (said once): \
                 RoPE extrapolates beyond the trained range, so results there are unreliable"
            ));
        }
        let positions = Tensor::arange_start(
            cache.seq_len,
            cache.seq_len + t,
            (Kind::Int64, self.device()),
        );
        self.forward_at(tokens, &positions, cache, opts)
    }

    /// Projects final hidden states `[.., hidden]` to logits `[.., vocab]`.
    pub fn lm_head(&self, h: &Tensor) -> Tensor {
        match &self.lm_head {
            Some(head) => head.forward(h),
            None => h.matmul(&self.embed_tokens.tr()),
        }
    }

    /// Runs `tokens` `[b, t]` into a fresh cache without computing logits.
    pub fn prefill(&self, tokens: &Tensor) -> Result<KvCache> {
        let _span = tracing::info_span!(
            "prefill",
            tokens = tokens.size().last().copied().unwrap_or(0)
        )
        .entered();
        let mut cache = KvCache::new();
        self.forward_with(
            tokens,
            &mut cache,
            &ForwardOptions {
                logits: Logits::None,
                ..Default::default()
            },
        )?;
        Ok(cache)
    }
}
