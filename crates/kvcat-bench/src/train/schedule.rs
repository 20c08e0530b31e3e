//! Schedules: the learning rate (linear warmup, then cosine), the per-batch budget and split,
//! and the per-step random generators that make runs reproducible and resumable (every draw
//! is a function of `(seed, step, micro-batch, stream)`, so no generator state is saved).

use super::config::{BudgetSchedule, OptimConfig};
use kvcat_core::Budget;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Independent random streams of one micro-batch.
#[derive(Debug, Clone, Copy)]
pub enum Stream {
    Data = 1,
    Split = 2,
    Policy = 3,
}

/// The generator for `(seed, step, micro, stream)`.
pub fn step_rng(seed: u64, step: usize, micro: usize, stream: Stream) -> StdRng {
    let mut z = seed ^ 0x9E37_79B9_7F4A_7C15;
    for x in [step as u64, micro as u64, stream as u64] {
        z = z.wrapping_add(x.wrapping_mul(0xBF58_476D_1CE4_E5B9));
        z = (z ^ (z >> 30)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
    }
    StdRng::seed_from_u64(z)
}

/// Learning rate at optimiser step `step` (0-based) of `total`.
pub fn learning_rate(o: &OptimConfig, step: usize, total: usize) -> f64 {
    if o.warmup > 0 && step < o.warmup {
        return o.lr * (step + 1) as f64 / o.warmup as f64;
    }
    let span = total.saturating_sub(o.warmup).max(1) as f64;
    let progress = ((step - o.warmup.min(step)) as f64 / span).min(1.0);
    let min = o.lr * o.min_lr_ratio;
    min + 0.5 * (o.lr - min) * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// Samples a budget from the schedule.
pub fn sample_budget(s: &BudgetSchedule, rng: &mut StdRng) -> Budget {
    match s {
        BudgetSchedule::Fixed { values } => values[rng.random_range(0..values.len())],
        BudgetSchedule::Uniform { min, max } => Budget::Fraction(if max > min {
            rng.random_range(*min..=*max)
        } else {
            *min
        }),
        BudgetSchedule::LogUniform { min, max } => Budget::Fraction(if max > min {
            rng.random_range(min.ln()..=max.ln()).exp().min(1.0)
        } else {
            *min
        }),
    }
}

/// Samples the prefix length uniformly from `[lo, hi]`.
pub fn sample_prefix(lo: i64, hi: i64, rng: &mut StdRng) -> i64 {
    rng.random_range(lo..=hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_to_floor() {
        let o = OptimConfig {
            lr: 1.0,
            min_lr_ratio: 0.1,
            warmup: 10,
            ..Default::default()
        };
        assert!((learning_rate(&o, 0, 100) - 0.1).abs() < 1e-12);
        assert!((learning_rate(&o, 9, 100) - 1.0).abs() < 1e-12);
        assert!((learning_rate(&o, 10, 100) - 1.0).abs() < 1e-12);
        assert!((learning_rate(&o, 100, 100) - 0.1).abs() < 1e-12);
        assert!(learning_rate(&o, 55, 100) < 0.6 && learning_rate(&o, 55, 100) > 0.5);
    }

    #[test]
    fn log_uniform_budget_stays_in_range() {
        let s = BudgetSchedule::LogUniform {
            min: 0.05,
            max: 0.5,
        };
        let mut rng = step_rng(1, 2, 0, Stream::Split);
        for _ in 0..1000 {
            match sample_budget(&s, &mut rng) {
                Budget::Fraction(f) => assert!((0.05..=0.5 + 1e-12).contains(&f)),
                other => panic!("{other:?}"),
            }
        }
    }
}
