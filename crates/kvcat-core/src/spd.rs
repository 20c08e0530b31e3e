//! Solving symmetric positive definite systems, as ridge normal equations are.
//!
//! Every ridge fit in kvcat (`attention_matching`'s values, the attention-matching policy's
//! OMP weights) solves `(XᵀX + λI) W = R`, which is symmetric positive definite for `λ > 0`.
//! Cholesky is the factorisation made for it (half the work of LU, no pivoting), and it
//! sidesteps a libtorch 2.11 CPU bug: batched f64 `linalg_solve` (LU) with more than one
//! intra-op thread fails with "Pivots given to lu_solve must all be greater or equal to 1"
//! (oneMKL `DLASWP` parameter errors) or silently returns garbage — measured on this
//! project's 2-core CPU with `[3, 256, 256]` and `[6, 256, 256]` systems (a residual of
//! 1e61 for the second), while one thread, or Cholesky, is exact to 1e-13.

use crate::Result;
use tch::Tensor;

/// Solves `a · x = b` for symmetric positive definite `a` `[.., n, n]` and `b` `[.., n, k]`
/// (any float kind and device; batch dimensions broadcast) → `x` `[.., n, k]`. An `a` that is
/// not positive definite (e.g. a zero ridge on a singular Gram matrix) is an error.
pub fn solve_spd(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let l = a.f_linalg_cholesky(false)?;
    Ok(b.f_cholesky_solve(&l, false)?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tch::{Device, Kind};

    /// A batch of ridge systems of the size that broke batched LU on 2 threads, solved with
    /// libtorch's default thread count (every core).
    #[test]
    fn batched_ridge_systems_are_solved_exactly() {
        tch::manual_seed(0);
        let opts = (Kind::Double, Device::Cpu);
        let (h, n, t) = (6, 1024, 256);
        let x = Tensor::rand([h, n, t], opts);
        let xtx = x.transpose(1, 2).bmm(&x);
        let lambda = xtx
            .diagonal(0, 1, 2)
            .sum_dim_intlist(&[1i64][..], true, Kind::Double)
            .unsqueeze(2)
            * (1e-3 / t as f64);
        let a = &xtx + Tensor::eye(t, opts).unsqueeze(0) * lambda;
        let b = Tensor::rand([h, t, 64], opts);
        let w = solve_spd(&a, &b).unwrap();
        let residual = (a.bmm(&w) - &b).abs().max().double_value(&[]);
        assert!(residual < 1e-8, "residual {residual}");
    }

    #[test]
    fn a_matrix_that_is_not_positive_definite_is_an_error() {
        let a = Tensor::from_slice(&[1.0f64, 0.0, 0.0, -1.0]).view([2, 2]);
        let b = Tensor::ones([2, 1], (Kind::Double, Device::Cpu));
        assert!(solve_spd(&a, &b).is_err());
    }
}
