//! Random eviction: uniform random scores, the baseline every method must beat.
//! kvpress `RandomPress`.
//!
//! Shapes: scores `[b, kv_heads, slots]` uniform in [0, 1), drawn from a generator seeded by
//! `CompressionInput::seed` (or the `seed` parameter when set) and the layer index, so runs
//! are reproducible and layers differ.

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Parameters of `random`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RandomParams {
    /// Overrides the run seed when set.
    pub seed: Option<u64>,
}

impl super::ScorerParams for RandomParams {}

crate::scorer!(
    /// The random scorer.
    RandomScorer(RandomParams),
    "random",
    "keep uniformly random slots (seeded; kvpress RandomPress)",
    |s, input, layer| {
        let l = super::layer(input, layer)?;
        let shape = l.positions.size();
        let n: i64 = shape.iter().product();
        let seed = s.params.seed.unwrap_or(input.seed);
        let mut rng = rand::rngs::StdRng::seed_from_u64(
            seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ layer as u64,
        );
        let v: Vec<f32> = (0..n).map(|_| rng.random::<f32>()).collect();
        Ok(Tensor::from_slice(&v)
            .view(shape.as_slice())
            .to_kind(Kind::Float)
            .to_device(l.k.device()))
    }
);
