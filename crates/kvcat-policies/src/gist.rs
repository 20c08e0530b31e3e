//! `gist`: learned summary slots instead of eviction — gist tokens (Mu et al. 2023) and
//! activation beacons (Zhang et al. 2024) trained with the KV-CAT loss.
//!
//! The prefix is cut into chunks of about `chunk_len` slots; `g` summary slots per chunk, run
//! from learned input embeddings (`embeddings` `[max_per_chunk, hidden]`), read their chunk and
//! the summary slots before them. Continuation queries see only the summary slots plus a window
//! of recent raw slots: `g = min(kept / chunks, max_per_chunk)` and the window takes the rest
//! of the budget, so summary slots count as kept slots. The mechanism is
//! [`kvcat_core::summary`]; at evaluation the `gist` compressor runs the same code with the
//! checkpoint's embeddings (saved as `gist.embeddings` and `gist.chunk_len` in
//! `policy.safetensors`).

use crate::util::check_input;
use kvcat_core::registry::to_table;
use kvcat_core::summary::SummaryLayout;
use kvcat_core::{Error, LlamaConfig, MaskPlan, MaskingPolicy, PolicyInput, Result, SummaryPlan};
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use tch::nn::{self, Init};
use tch::{Kind, Tensor};

const NAME: &str = "gist";

/// Parameters of `gist`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GistParams {
    /// Raw prefix slots per chunk.
    pub chunk_len: i64,
    /// The most summary slots a chunk gets (rows of the learned embedding table).
    pub max_per_chunk: i64,
}

impl Default for GistParams {
    fn default() -> Self {
        GistParams {
            chunk_len: 16,
            max_per_chunk: 8,
        }
    }
}

/// The gist policy: its parameters and, after `init`, the learned embeddings.
pub struct GistPolicy {
    params: GistParams,
    embeddings: Option<Tensor>,
}

impl MaskingPolicy for GistPolicy {
    fn name(&self) -> &'static str {
        NAME
    }
    fn params(&self) -> toml::Table {
        to_table(&self.params)
    }
    fn init(&mut self, root: &nn::Path, cfg: &LlamaConfig) -> Result<()> {
        let init = Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        let dims = [self.params.max_per_chunk, cfg.hidden_size];
        self.embeddings = Some(root.var("embeddings", &dims, init));
        let chunk = root.zeros_no_train("chunk_len", &[1]);
        tch::no_grad(|| {
            let _ = chunk.shallow_clone().fill_(self.params.chunk_len as f64);
        });
        Ok(())
    }
    fn plan(&mut self, input: &PolicyInput, _rng: &mut StdRng) -> Result<MaskPlan> {
        let (b, _, p) = check_input(input)?;
        let embeddings = self.embeddings.as_ref().ok_or_else(|| {
            Error::invalid("policy `gist`: plan called before init (no learned embeddings)")
        })?;
        let cfg = &input.model.config;
        let layout = SummaryLayout::for_budget(
            p,
            input.kept,
            self.params.chunk_len,
            self.params.max_per_chunk,
        )?;
        let device = input.model.device();
        let window = Tensor::arange(p, (Kind::Int64, device)).ge(p - layout.window);
        let keep = window
            .view([1, 1, p])
            .expand([b, cfg.num_key_value_heads, p], false)
            .contiguous();
        Ok(MaskPlan {
            prefix_len: p,
            kept: layout.kept(),
            keep: (0..cfg.num_hidden_layers)
                .map(|_| keep.shallow_clone())
                .collect(),
            soft_bias: None,
            summary: Some(SummaryPlan {
                embeddings: embeddings.to_kind(input.model.kind()),
                layout,
            }),
        })
    }
}

/// Checks the parameters and builds the policy.
fn build(params: GistParams) -> Result<GistPolicy> {
    for (field, v) in [
        ("chunk_len", params.chunk_len),
        ("max_per_chunk", params.max_per_chunk),
    ] {
        if v < 1 {
            return Err(Error::Params {
                kind: "policy",
                name: NAME.into(),
                reason: format!("field `{field}` must be >= 1, got {v}"),
            });
        }
    }
    Ok(GistPolicy {
        params,
        embeddings: None,
    })
}

kvcat_core::register!(
    dyn MaskingPolicy,
    NAME,
    "learned summary slots per prefix chunk (gist / Activation Beacon); the `gist` compressor replays them",
    GistParams,
    |params| build(params)
);
