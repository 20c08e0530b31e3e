//! Non-negative least squares, `min ‖A w − b‖²  s.t.  w ≥ 0`, in f64.
//!
//! Attention matching (Zweiger et al. 2026) fits one non-negative mass weight `w_j = exp(β_j)`
//! per kept key so that the compacted attention mass matches the original; that is an NNLS
//! problem with one row per reference query and one column per kept key.
//!
//! Two solvers, both on the normal equations `G = AᵀA`, `h = Aᵀb`:
//! - [`lawson_hanson`]: the exact active-set method of Lawson & Hanson (1974), in the
//!   normal-equation form of Bro & De Jong (1997, "A fast non-negativity-constrained least
//!   squares algorithm"). Exact, for small systems (it solves a `p×p` Cholesky per step).
//! - [`projected_gradient`]: accelerated projected gradient (FISTA, Beck & Teboulle 2009, with
//!   adaptive restart) with step `1/λ_max(G)`: `O(p²)` per iteration, for large systems.
//!
//! Both return weights that are exactly `≥ 0` (the projection is part of every iterate).

use kvcat_core::{Error, Result};
use tch::{Kind, Tensor};

/// Which solver [`nnls`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Lawson–Hanson when `p ≤ exact_max`, else projected gradient.
    Auto {
        exact_max: usize,
    },
    LawsonHanson,
    ProjectedGradient,
}

impl Method {
    /// Whether a problem with `p` unknowns is solved exactly (Lawson–Hanson).
    pub fn is_exact(self, p: usize) -> bool {
        match self {
            Method::LawsonHanson => true,
            Method::ProjectedGradient => false,
            Method::Auto { exact_max } => p <= exact_max,
        }
    }
}

/// Solves `min ‖A w − b‖², w ≥ 0` for `a` `[n, p]`, `b` `[n]` (any float kind, any device;
/// computed in f64 on the CPU). Returns `w` `[p]` as f64 on the CPU.
pub fn nnls(a: &Tensor, b: &Tensor, method: Method, max_iter: usize) -> Result<Tensor> {
    let (g, h) = normal_equations(a, b)?;
    let p = h.size()[0] as usize;
    if method.is_exact(p) {
        lawson_hanson(&g, &h)
    } else {
        Ok(projected_gradient(&g, &h, None, max_iter))
    }
}

/// `(G, h) = (AᵀA, Aᵀb)` in f64 on the CPU, with shape checks.
pub fn normal_equations(a: &Tensor, b: &Tensor) -> Result<(Tensor, Tensor)> {
    let (sa, sb) = (a.size(), b.size());
    if sa.len() != 2 || sb.len() != 1 || sa[0] != sb[0] {
        return Err(Error::invalid(format!(
            "nnls: A must be [n, p] and b [n]; got A {sa:?}, b {sb:?}"
        )));
    }
    let a = a.to_device(tch::Device::Cpu).to_kind(Kind::Double);
    let b = b.to_device(tch::Device::Cpu).to_kind(Kind::Double);
    let g = a.tr().matmul(&a);
    let h = a.tr().matmul(&b.unsqueeze(1)).squeeze_dim(1);
    Ok((g, h))
}

/// Exact NNLS on the normal equations `G` `[p, p]`, `h` `[p]` (f64) by the Lawson–Hanson
/// active-set method. Returns `w` `[p]` f64, every entry `≥ 0`.
pub fn lawson_hanson(g: &Tensor, h: &Tensor) -> Result<Tensor> {
    let p = h.size()[0] as usize;
    let gv: Vec<f64> = g.contiguous().view([-1]).try_into()?;
    let hv: Vec<f64> = h.contiguous().try_into()?;
    if gv.len() != p * p {
        return Err(Error::invalid(format!(
            "nnls: G has {} entries, expected {p}×{p}",
            gv.len()
        )));
    }
    let w = lawson_hanson_vec(&gv, &hv, p);
    Ok(Tensor::from_slice(&w))
}

/// The active-set iteration on row-major `g` (`p×p`) and `h` (`p`).
fn lawson_hanson_vec(g: &[f64], h: &[f64], p: usize) -> Vec<f64> {
    let scale = (0..p)
        .map(|i| g[i * p + i])
        .fold(0.0f64, f64::max)
        .max(1e-300);
    let tol = 1e-12 * scale.max(h.iter().fold(0.0f64, |m, x| m.max(x.abs())));
    let mut x = vec![0.0; p];
    let mut passive = vec![false; p];
    let grad = |x: &[f64]| -> Vec<f64> {
        (0..p)
            .map(|i| h[i] - (0..p).map(|j| g[i * p + j] * x[j]).sum::<f64>())
            .collect()
    };
    let mut w = grad(&x);
    for _outer in 0..(3 * p + 10) {
        // most positive gradient among the active (zero) set
        let cand = (0..p)
            .filter(|&j| !passive[j])
            .max_by(|&a, &b| w[a].total_cmp(&w[b]));
        let Some(j) = cand else { break };
        if w[j] <= tol {
            break;
        }
        passive[j] = true;
        for _inner in 0..(3 * p + 10) {
            let idx: Vec<usize> = (0..p).filter(|&i| passive[i]).collect();
            let s_p = solve_spd(g, h, p, &idx);
            if s_p.iter().all(|&v| v > 0.0) {
                x = vec![0.0; p];
                for (k, &i) in idx.iter().enumerate() {
                    x[i] = s_p[k];
                }
                break;
            }
            // step back towards x until the first passive variable hits zero
            let mut alpha = f64::INFINITY;
            for (k, &i) in idx.iter().enumerate() {
                if s_p[k] <= 0.0 {
                    let denom = x[i] - s_p[k];
                    if denom > 0.0 {
                        alpha = alpha.min(x[i] / denom);
                    }
                }
            }
            if !alpha.is_finite() {
                alpha = 0.0;
            }
            for (k, &i) in idx.iter().enumerate() {
                x[i] += alpha * (s_p[k] - x[i]);
                if x[i] <= 1e-15 * scale.sqrt().max(1.0) || s_p[k] <= 0.0 && x[i] <= 0.0 {
                    x[i] = 0.0;
                    passive[i] = false;
                }
            }
            if idx.iter().all(|&i| !passive[i]) {
                break;
            }
        }
        w = grad(&x);
    }
    x.iter().map(|&v| v.max(0.0)).collect()
}

/// Solves `G[idx, idx] s = h[idx]` by Cholesky with a tiny relative jitter.
fn solve_spd(g: &[f64], h: &[f64], p: usize, idx: &[usize]) -> Vec<f64> {
    let m = idx.len();
    let mut l = vec![0.0; m * m];
    let diag_max = idx.iter().map(|&i| g[i * p + i]).fold(0.0f64, f64::max);
    let jitter = 1e-12 * diag_max.max(1e-300);
    for r in 0..m {
        for c in 0..=r {
            let mut s = g[idx[r] * p + idx[c]];
            if r == c {
                s += jitter;
            }
            for k in 0..c {
                s -= l[r * m + k] * l[c * m + k];
            }
            if r == c {
                l[r * m + r] = s.max(jitter).sqrt();
            } else {
                l[r * m + c] = s / l[c * m + c];
            }
        }
    }
    let mut y = vec![0.0; m];
    for r in 0..m {
        let mut s = h[idx[r]];
        for k in 0..r {
            s -= l[r * m + k] * y[k];
        }
        y[r] = s / l[r * m + r];
    }
    let mut x = vec![0.0; m];
    for r in (0..m).rev() {
        let mut s = y[r];
        for k in (r + 1)..m {
            s -= l[k * m + r] * x[k];
        }
        x[r] = s / l[r * m + r];
    }
    x
}

/// NNLS on the normal equations by FISTA with adaptive restart, projecting onto `w ≥ 0` at
/// every step. `start` (`[p]`, clamped to `≥ 0`) defaults to the best non-negative multiple of
/// the all-ones vector. Stops after `max_iter` iterations or when the relative change of `w`
/// falls below 1e-10. Returns `w` `[p]` f64.
pub fn projected_gradient(
    g: &Tensor,
    h: &Tensor,
    start: Option<&Tensor>,
    max_iter: usize,
) -> Tensor {
    let p = h.size()[0];
    let opts = (Kind::Double, g.device());
    // λ_max(G) by power iteration (G is PSD), padded so that the step is safe.
    let mut u = Tensor::ones([p], opts) / (p as f64).sqrt();
    let mut lmax = 0.0;
    for _ in 0..30 {
        let gu = g.mv(&u);
        let n = gu.norm().double_value(&[]);
        if n <= 0.0 {
            break;
        }
        lmax = n;
        u = gu / n;
    }
    if lmax <= 0.0 {
        return Tensor::zeros([p], opts);
    }
    let step = 1.0 / (1.05 * lmax);
    let mut w = match start {
        Some(s) => s.to_kind(Kind::Double).clamp_min(0.0),
        None => {
            let ones = Tensor::ones([p], opts);
            let num = h.sum(Kind::Double).double_value(&[]);
            let den = g.sum(Kind::Double).double_value(&[]);
            ones * if den > 0.0 { (num / den).max(0.0) } else { 0.0 }
        }
    };
    let mut y = w.copy();
    let mut t = 1.0f64;
    let objective = |w: &Tensor| -> f64 {
        // ½ wᵀGw − hᵀw (the LS objective up to a constant)
        (w.dot(&g.mv(w)) * 0.5 - h.dot(w)).double_value(&[])
    };
    let mut f_prev = objective(&w);
    for _ in 0..max_iter {
        let grad = g.mv(&y) - h;
        let w_next = (&y - grad * step).clamp_min(0.0);
        let f_next = objective(&w_next);
        if f_next > f_prev {
            // adaptive restart (O'Donoghue & Candès 2015): drop momentum
            t = 1.0;
            y = w.copy();
            continue;
        }
        let t_next = (1.0 + (1.0 + 4.0 * t * t).sqrt()) / 2.0;
        let diff = &w_next - &w;
        y = &w_next + &diff * ((t - 1.0) / t_next);
        let rel = diff.norm().double_value(&[]) / w_next.norm().double_value(&[]).max(1e-300);
        w = w_next;
        t = t_next;
        f_prev = f_next;
        if rel < 1e-10 {
            break;
        }
    }
    w.clamp_min(0.0)
}
