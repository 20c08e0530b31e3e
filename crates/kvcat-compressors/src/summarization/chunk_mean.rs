//! `chunk_mean`: pool runs of adjacent slots into one slot each.
//!
//! Average pooling of the KV sequence, as in the pooling baselines of token-merging and
//! activation-beacon work (e.g. Zhang et al. 2024, "Long Context Compression with Activation
//! Beacon", which compares against mean-pooled KV).
//!
//! The `s` slots of every head are cut into `t` contiguous chunks whose sizes differ by at
//! most one (slot `j` goes to chunk `⌊j·t/s⌋`). A chunk's key and value are the mean of its
//! members' post-RoPE keys and values (`weighting = "uniform"`), or the mean weighted by the
//! attention mass of the last `mass_window` context queries (`"attention"`). The chunk gets
//! bias `β = ln(chunk size)` (`bias = "count"`) or none.
//!
//! **Position bookkeeping:** a chunk records the position of its *last* slot (the latest
//! token it summarizes); new tokens are still positioned from `seq_len`.

use super::pool::{pool, window_mass, MergeBias};
use kvcat_core::compressor::{Compressed, CompressionInput, Compressor, CompressorDescriptor};
use kvcat_core::registry::{parse_params, to_table};
use kvcat_core::{Error, KvCache, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// How members are weighted inside a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Weighting {
    Uniform,
    Attention,
}

/// Parameters of `chunk_mean`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChunkMeanParams {
    pub weighting: Weighting,
    /// Context queries (the last ones) whose attention weights members (`weighting = "attention"`).
    pub mass_window: i64,
    pub bias: MergeBias,
}

impl Default for ChunkMeanParams {
    fn default() -> Self {
        ChunkMeanParams {
            weighting: Weighting::Uniform,
            mass_window: 64,
            bias: MergeBias::Count,
        }
    }
}

/// The `chunk_mean` compressor.
pub struct ChunkMean {
    pub params: ChunkMeanParams,
}

impl Compressor for ChunkMean {
    fn name(&self) -> &'static str {
        "chunk_mean"
    }
    fn params(&self) -> toml::Table {
        to_table(&self.params)
    }
    fn compress(&self, input: &CompressionInput) -> Result<Compressed> {
        let cache = input.cache;
        let Some(t) = input.kept_slots("chunk_mean")? else {
            return Ok(Compressed::unchanged(cache));
        };
        let _g = tch::no_grad_guard();
        let mut layers = Vec::with_capacity(cache.layers.len());
        for (i, layer) in cache.layers.iter().enumerate() {
            let s = layer.k.size();
            let (b, h, n) = (s[0], s[1], s[2]);
            let dev = layer.k.device();
            let chunk = (Tensor::arange(n, (Kind::Int64, dev)) * t).floor_divide_scalar(n);
            let assign = chunk.view([1, 1, n]).expand([b, h, n], false).contiguous();
            let mut weight = match self.params.weighting {
                Weighting::Uniform => Tensor::ones([b, h, n], (Kind::Float, dev)),
                Weighting::Attention => window_mass(input, i, self.params.mass_window)?,
            };
            if let Some(m) = &layer.keep {
                weight *= m.to_kind(Kind::Float);
            }
            // the position of each chunk's last slot: max j with ⌊j·t/n⌋ = c is ⌈(c+1)·n/t⌉ − 1
            let c = Tensor::arange(t, (Kind::Int64, dev));
            let last = ((c + 1) * n + (t - 1)).floor_divide_scalar(t) - 1;
            let last = last.view([1, 1, t]).expand([b, h, t], false).contiguous();
            let positions = layer.positions.gather(2, &last, false);
            layers.push(pool(
                layer,
                &assign,
                &weight,
                positions,
                t,
                self.params.bias,
            )?);
        }
        Ok(Compressed {
            cache: KvCache {
                layers,
                seq_len: cache.seq_len,
            },
            extra: vec![],
        })
    }
}

fn build(table: &toml::Table) -> Result<Box<dyn Compressor>> {
    let params: ChunkMeanParams = parse_params("compressor", "chunk_mean", table)?;
    if params.mass_window < 1 {
        return Err(Error::Params {
            kind: "compressor",
            name: "chunk_mean".into(),
            reason: format!("mass_window must be ≥ 1, got {}", params.mass_window),
        });
    }
    Ok(Box::new(ChunkMean { params }))
}

inventory::submit! {
    CompressorDescriptor {
        name: "chunk_mean",
        description: "mean-pool runs of adjacent slots into one slot each (chunk keeps its last position)",
        defaults: || to_table(&ChunkMeanParams::default()),
        build,
    }
}
