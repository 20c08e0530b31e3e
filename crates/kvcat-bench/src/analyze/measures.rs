//! The per-head measures of a compressibility profile, on plain tensors of one layer.
//!
//! Shapes (`h` KV heads, `g` query heads per KV head, `c` continuation queries, `s` context
//! slots, `d` head dim): attention `a` is `[h, g·c, s]` (each row a probability distribution
//! over the context slots), values `v` are `[h, s, d]`, a kept set is a `[h, s]` bool mask.
//!
//! **Oracle.** For a kept-slot count `k`, the oracle set of a KV head is the `k` slots with the
//! largest total continuation-query attention mass `Σ_q a[q, s]` (top-mass per head). Kept mass
//! is additive over slots, so this set is *exactly* optimal for kept mass: no other set of `k`
//! slots keeps more. It is *not* necessarily the set with the smallest attention-output error
//! (the renormalised softmax over a subset can cancel or amplify value directions), so the
//! oracle's output error is an upper bound on the best achievable error for that `k`.

use tch::{Kind, Tensor};

/// The oracle kept set: the `k` slots of each head with the largest attention mass summed over
/// queries. `a`: `[h, q, s]` → `[h, s]` bool with exactly `min(k, s)` true per head.
pub fn oracle_mask(a: &Tensor, k: i64) -> Tensor {
    let mass = a.sum_dim_intlist(1, false, Kind::Float); // [h, s]
    let k = k.clamp(0, mass.size()[1]);
    let (_, idx) = mass.topk(k, -1, true, false);
    mass.zeros_like()
        .to_kind(Kind::Bool)
        .scatter_value(-1, &idx, 1)
}

/// Mean over queries of the attention mass on the kept slots: `a` `[h, q, s]`, `mask`
/// `[h, s]` → `[h]` in [0, 1].
pub fn kept_mass(a: &Tensor, mask: &Tensor) -> Tensor {
    let m = mask.to_kind(Kind::Float).unsqueeze(1); // [h, 1, s]
    (a * m)
        .sum_dim_intlist(-1, false, Kind::Float)
        .mean_dim(-1, false, Kind::Float)
}

/// Attention outputs `a @ v`: `[h, q, s]` × `[h, s, d]` → `[h, q, d]` (f32).
pub fn outputs(a: &Tensor, v: &Tensor) -> Tensor {
    a.to_kind(Kind::Float).matmul(&v.to_kind(Kind::Float))
}

/// Attention outputs when only the masked slots are visible (the softmax renormalised over
/// them, as after eviction): `[h, q, d]`. Queries whose kept mass is 0 output 0.
pub fn kept_outputs(a: &Tensor, v: &Tensor, mask: &Tensor) -> Tensor {
    let am = a * mask.to_kind(Kind::Float).unsqueeze(1);
    let z = am.sum_dim_intlist(-1, true, Kind::Float).clamp_min(1e-30);
    outputs(&(am / z), v)
}

/// Relative error `‖approx − full‖_F / ‖full‖_F` per head over its queries and dims:
/// `[h, q, d]` twice → `[h]`.
pub fn relative_error(approx: &Tensor, full: &Tensor) -> Tensor {
    let num = (approx - full)
        .square()
        .sum_dim_intlist([1i64, 2].as_slice(), false, Kind::Float)
        .sqrt();
    let den = full
        .square()
        .sum_dim_intlist([1i64, 2].as_slice(), false, Kind::Float)
        .sqrt()
        .clamp_min(1e-30);
    num / den
}

/// Effective rank of each head's matrix (Roy & Vetterli 2007, "The effective rank: a measure of
/// effective dimensionality"): `exp(H(p))` with `p = σ / Σσ` the normalised singular values.
/// `x`: `[h, s, d]` (raw, uncentred keys or values) → `[h]` in `[1, min(s, d)]`.
pub fn effective_rank(x: &Tensor) -> Tensor {
    let (_, sv, _) = x.to_kind(Kind::Float).svd(true, false); // σ: [h, min(s, d)]
    let p = &sv / sv.sum_dim_intlist(-1, true, Kind::Float).clamp_min(1e-30);
    entropy(&p).exp()
}

/// Shannon entropy (nats) along the last dim, with `0 · ln 0 = 0`: `[.., n]` → `[..]`.
pub fn entropy(p: &Tensor) -> Tensor {
    -(p * p.clamp_min(1e-30).log()).sum_dim_intlist(-1, false, Kind::Float)
}

/// Mean attention entropy (nats) of each head's queries over the context slots:
/// `a` `[h, q, s]` → `[h]`.
pub fn attention_entropy(a: &Tensor) -> Tensor {
    entropy(a).mean_dim(-1, false, Kind::Float)
}

/// The context slots whose original position a compressed layer still shows: `positions`
/// `[h, s']` int64 with visibility `visible` `[h, s']` bool → `[h, t]` bool over the `t`
/// context positions (out-of-range positions are ignored).
pub fn positions_mask(positions: &Tensor, visible: &Tensor, t: i64) -> Tensor {
    let inside = positions
        .ge(0)
        .logical_and(&positions.lt(t))
        .logical_and(visible);
    let idx = positions.where_self(&inside, &positions.full_like(t)); // t = the "dropped" bin
    let h = positions.size()[0];
    Tensor::zeros([h, t + 1], (Kind::Bool, positions.device()))
        .scatter_value(-1, &idx, 1)
        .narrow(-1, 0, t)
}

/// Area under a kept-mass curve over the budget fraction, closed by `(0, 0)` and `(1, 1)`
/// (trapezoids). `points`: `(budget, kept mass)` in any order. Uniform attention gives 0.5,
/// all mass on one slot gives close to 1.
pub fn mass_auc(points: &[(f64, f64)]) -> f64 {
    let mut pts: Vec<(f64, f64)> = points.to_vec();
    pts.push((0.0, 0.0));
    pts.push((1.0, 1.0));
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    pts.dedup_by(|a, b| a.0 == b.0);
    pts.windows(2)
        .map(|w| (w[1].0 - w[0].0) * (w[1].1 + w[0].1) / 2.0)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn effective_rank_of_identity_and_rank_one() {
        let eye = Tensor::eye(4, (Kind::Float, Device::Cpu)).unsqueeze(0);
        assert!((effective_rank(&eye).double_value(&[0]) - 4.0).abs() < 1e-4);
        let r1 = Tensor::ones([1, 6, 4], (Kind::Float, Device::Cpu));
        assert!((effective_rank(&r1).double_value(&[0]) - 1.0).abs() < 1e-3);
    }

    #[test]
    fn auc_of_uniform_attention_is_one_half() {
        let pts: Vec<(f64, f64)> = [0.1, 0.25, 0.5].iter().map(|&b| (b, b)).collect();
        assert!((mass_auc(&pts) - 0.5).abs() < 1e-12);
        assert!((mass_auc(&[(0.1, 1.0)]) - 0.95).abs() < 1e-12);
    }

    #[test]
    fn positions_mask_ignores_hidden_and_out_of_range_slots() {
        let pos = Tensor::from_slice(&[0i64, 3, 9, 2]).view([1, 4]);
        let vis = Tensor::from_slice(&[true, true, true, false]).view([1, 4]);
        let m = positions_mask(&pos, &vis, 5);
        let got: Vec<bool> = Vec::<bool>::try_from(m.view([-1])).expect("bools");
        assert_eq!(got, vec![true, false, false, true, false]);
    }
}
