//! Paired bootstrap confidence intervals for policy-minus-baseline differences.
//!
//! The input is a set of per-example differences grouped by training seed (one group when
//! the manifest lists no `seeds`). The point estimate is the mean over seeds of the mean over
//! each seed's examples. The interval is a **percentile bootstrap** (Efron & Tibshirani,
//! *An Introduction to the Bootstrap*, 1993, ch. 13): each of [`Bootstrap::resamples`]
//! resamples draws the seeds with replacement and then, within each drawn seed, its examples
//! with replacement (a **hierarchical bootstrap**, Saravanan, Berman & Sober, *Application of
//! the hierarchical bootstrap to multi-level data in neuroscience*, 2020), and recomputes the
//! estimate; the interval is the `(1 − level)/2` and `(1 + level)/2` quantiles of those
//! estimates (linear interpolation between order statistics). With one seed it is the
//! ordinary paired bootstrap over examples.
//!
//! Randomness comes from SplitMix64 (Steele, Lea & Flood, 2014) seeded with
//! [`Bootstrap::seed`], so an interval is a pure function of its input and configuration,
//! identical across platforms and library versions.

/// How intervals are computed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bootstrap {
    /// Number of bootstrap resamples.
    pub resamples: usize,
    /// Seed of the resampling stream.
    pub seed: u64,
    /// Coverage of the interval, in (0, 1).
    pub level: f64,
}

impl Default for Bootstrap {
    /// 2,000 resamples, seed 0, 95% intervals.
    fn default() -> Bootstrap {
        Bootstrap {
            resamples: 2000,
            seed: 0,
            level: 0.95,
        }
    }
}

/// A point estimate with its bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    /// Mean over seeds of the mean over examples.
    pub mean: f64,
    pub lo: f64,
    pub hi: f64,
    /// Examples summed over seeds.
    pub examples: usize,
    pub seeds: usize,
}

impl Interval {
    /// Whether the interval excludes 0. An estimate from a single example (no spread to
    /// resample) is never significant.
    pub fn significant(&self) -> bool {
        self.examples >= 2 && (self.lo > 0.0 || self.hi < 0.0)
    }
}

/// SplitMix64: a small, fast generator with a fixed, documented output sequence.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform index in `0..n` (multiply-shift; the bias is below 2⁻³² for n < 2³²).
    fn index(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// The `q` quantile of sorted `xs` by linear interpolation between order statistics.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (i, frac) = (pos.floor() as usize, pos.fract());
    match sorted.get(i + 1) {
        Some(next) => sorted[i] + frac * (next - sorted[i]),
        None => sorted[i],
    }
}

/// The bootstrap interval of the mean of `groups` (one group of per-example differences per
/// training seed). Non-finite differences and empty groups are dropped; `None` when nothing
/// is left.
pub fn paired_interval(groups: &[Vec<f64>], cfg: &Bootstrap) -> Option<Interval> {
    let groups: Vec<Vec<f64>> = groups
        .iter()
        .map(|g| g.iter().copied().filter(|x| x.is_finite()).collect())
        .filter(|g: &Vec<f64>| !g.is_empty())
        .collect();
    if groups.is_empty() {
        return None;
    }
    let estimate = mean(&groups.iter().map(|g| mean(g)).collect::<Vec<_>>());
    let mut rng = SplitMix64(cfg.seed);
    let mut stats = Vec::with_capacity(cfg.resamples);
    for _ in 0..cfg.resamples.max(1) {
        let mut total = 0.0;
        for _ in 0..groups.len() {
            let g = &groups[rng.index(groups.len())];
            let sum: f64 = (0..g.len()).map(|_| g[rng.index(g.len())]).sum();
            total += sum / g.len() as f64;
        }
        stats.push(total / groups.len() as f64);
    }
    stats.sort_by(f64::total_cmp);
    let tail = (1.0 - cfg.level.clamp(0.0, 1.0)) / 2.0;
    Some(Interval {
        mean: estimate,
        lo: quantile(&stats, tail),
        hi: quantile(&stats, 1.0 - tail),
        examples: groups.iter().map(Vec::len).sum(),
        seeds: groups.len(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_constant_difference_has_a_degenerate_interval() {
        let i = paired_interval(&[vec![0.25; 12]], &Bootstrap::default()).unwrap();
        assert_eq!((i.mean, i.lo, i.hi), (0.25, 0.25, 0.25));
        assert!(i.significant());
        let zero = paired_interval(&[vec![0.0; 12]], &Bootstrap::default()).unwrap();
        assert!(!zero.significant());
    }

    #[test]
    fn a_clearly_shifted_sample_is_significant_and_a_centred_one_is_not() {
        // Alternating ±0.1 around +0.5 and around 0.
        let shifted: Vec<f64> = (0..20).map(|i| 0.5 + 0.1 * (-1f64).powi(i)).collect();
        let centred: Vec<f64> = (0..20).map(|i| 0.1 * (-1f64).powi(i)).collect();
        let cfg = Bootstrap::default();
        let s = paired_interval(&[shifted], &cfg).unwrap();
        assert!(s.significant() && s.lo > 0.4 && s.hi < 0.6, "{s:?}");
        let c = paired_interval(&[centred], &cfg).unwrap();
        assert!(!c.significant() && c.lo < 0.0 && c.hi > 0.0, "{c:?}");
        assert!(c.lo <= c.mean && c.mean <= c.hi);
    }

    #[test]
    fn deterministic_under_the_seed_and_different_across_seeds() {
        let xs: Vec<f64> = (0..30)
            .map(|i| ((i * 37) % 11) as f64 / 10.0 - 0.4)
            .collect();
        let a = Bootstrap::default();
        let b = Bootstrap { seed: 7, ..a };
        let i1 = paired_interval(std::slice::from_ref(&xs), &a).unwrap();
        assert_eq!(i1, paired_interval(std::slice::from_ref(&xs), &a).unwrap());
        assert_ne!(i1, paired_interval(&[xs], &b).unwrap());
    }

    #[test]
    fn seeds_widen_the_interval_when_they_disagree() {
        // Each seed is internally tight, but seeds disagree: resampling seeds must show it.
        let tight = |c: f64| -> Vec<f64> { (0..20).map(|i| c + 0.001 * (i % 3) as f64).collect() };
        let cfg = Bootstrap::default();
        let one = paired_interval(&[tight(0.1)], &cfg).unwrap();
        let three = paired_interval(&[tight(-0.2), tight(0.1), tight(0.4)], &cfg).unwrap();
        assert_eq!((three.seeds, three.examples), (3, 60));
        assert!((three.mean - 0.1).abs() < 0.01, "{three:?}");
        assert!(
            three.hi - three.lo > 20.0 * (one.hi - one.lo),
            "{one:?} {three:?}"
        );
        assert!(!three.significant());
    }

    #[test]
    fn non_finite_values_and_empty_groups_are_dropped() {
        let i = paired_interval(&[vec![1.0, f64::NAN, 1.0], vec![]], &Bootstrap::default());
        let i = i.unwrap();
        assert_eq!((i.examples, i.seeds, i.mean), (2, 1, 1.0));
        assert!(paired_interval(&[vec![f64::INFINITY]], &Bootstrap::default()).is_none());
        let single = paired_interval(&[vec![0.3]], &Bootstrap::default()).unwrap();
        assert!(!single.significant(), "one example is never significant");
    }
}
