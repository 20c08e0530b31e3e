//! NNLS for many independent heads at once, `min ‖A_h w_h − b_h‖², w_h ≥ 0`, on the normal
//! equations `G` `[H, p, p]`, `h` `[H, p]` (f64, any device).
//!
//! The same two solvers as [`nnls`](super::nnls): exact Lawson–Hanson (1974) for small `p`
//! (host code, one device→host copy for all heads), and FISTA projected gradient (Beck &
//! Teboulle 2009, adaptive restart of O'Donoghue & Candès 2015) for large `p`, run for all heads
//! together on the device. Heads whose relative change falls below 1e-10 are frozen; the device
//! is asked whether all heads are done only every [`CHECK_EVERY`] iterations, so an iteration
//! makes no host round-trip.

use super::nnls::{lawson_hanson, Method};
use kvcat_core::{Error, Result};
use tch::{Kind, Tensor};

/// Iterations between convergence checks (host syncs) of the batched projected gradient.
pub const CHECK_EVERY: usize = 50;

/// Solves every head's NNLS for `g` `[H, p, p]`, `h` `[H, p]` (f64). Returns `w` `[H, p]` f64 on
/// the device of `g`, every entry `≥ 0`.
pub fn nnls_batch(g: &Tensor, h: &Tensor, method: Method, max_iter: usize) -> Result<Tensor> {
    let (gs, hs) = (g.size(), h.size());
    if gs.len() != 3 || hs.len() != 2 || gs[0] != hs[0] || gs[1] != hs[1] || gs[2] != hs[1] {
        return Err(Error::invalid(format!(
            "nnls_batch: expected G [H, p, p] and h [H, p]; got {gs:?}, {hs:?}"
        )));
    }
    let p = hs[1] as usize;
    let exact = match method {
        Method::LawsonHanson => true,
        Method::ProjectedGradient => false,
        Method::Auto { exact_max } => p <= exact_max,
    };
    if exact {
        lawson_hanson_heads(g, h)
    } else {
        Ok(projected_gradient_batch(g, h, max_iter))
    }
}

/// Lawson–Hanson per head on the host; one copy of all heads' systems each way.
fn lawson_hanson_heads(g: &Tensor, h: &Tensor) -> Result<Tensor> {
    let cpu = tch::Device::Cpu;
    let (g_cpu, h_cpu) = (g.to_device(cpu), h.to_device(cpu));
    let heads = h.size()[0];
    let w: Vec<Tensor> = (0..heads)
        .map(|i| lawson_hanson(&g_cpu.get(i), &h_cpu.get(i)))
        .collect::<Result<_>>()?;
    Ok(Tensor::stack(&w, 0).to_device(g.device()))
}

/// `G x` for `g` `[H, p, p]`, `x` `[H, p]`.
fn bmv(g: &Tensor, x: &Tensor) -> Tensor {
    g.bmm(&x.unsqueeze(2)).squeeze_dim(2)
}

/// `½ xᵀGx − hᵀx` per head: `[H]`.
fn objective(g: &Tensor, h: &Tensor, x: &Tensor) -> Tensor {
    let gx = bmv(g, x);
    ((gx * 0.5 - h) * x).sum_dim_intlist(&[1i64][..], false, Kind::Double)
}

/// `λ_max(G_h)` per head `[H, 1]` by 30 power iterations (no host sync).
fn lambda_max(g: &Tensor) -> Tensor {
    let s = g.size();
    let mut u = Tensor::ones([s[0], s[1]], (Kind::Double, g.device())) / (s[1] as f64).sqrt();
    let mut norm = Tensor::zeros([s[0], 1], (Kind::Double, g.device()));
    for _ in 0..30 {
        let gu = bmv(g, &u);
        norm = gu.norm_scalaropt_dim(2, &[1i64][..], true);
        u = gu / norm.clamp_min(1e-300);
    }
    norm
}

/// Batched FISTA with per-head adaptive restart, the batched twin of
/// [`projected_gradient`](super::nnls::projected_gradient) (same start, step and stopping rule,
/// applied per head). Returns `w` `[H, p]`.
pub fn projected_gradient_batch(g: &Tensor, h: &Tensor, max_iter: usize) -> Tensor {
    let opts = (Kind::Double, g.device());
    let lmax = lambda_max(g);
    let degenerate = lmax.le(0.0); // [H, 1]: G = 0, the answer is w = 0
    let step = (lmax * 1.05).clamp_min(1e-300).reciprocal();
    let num = h.sum_dim_intlist(&[1i64][..], true, Kind::Double);
    let den = g
        .sum_dim_intlist(&[1i64, 2][..], false, Kind::Double)
        .unsqueeze(1);
    let scale = (num / den.clamp_min(1e-300))
        .clamp_min(0.0)
        .masked_fill(&den.le(0.0), 0.0);
    let mut w = Tensor::ones(h.size(), opts) * scale;
    let mut y = w.copy();
    let mut t = Tensor::ones([h.size()[0], 1], opts);
    let mut f_prev = objective(g, h, &w).unsqueeze(1);
    let mut done = degenerate.shallow_clone();
    for it in 0..max_iter {
        let grad = bmv(g, &y) - h;
        let w_next = (&y - grad * &step).clamp_min(0.0);
        let f_next = objective(g, h, &w_next).unsqueeze(1);
        let restart = f_next.gt_tensor(&f_prev).logical_or(&done);
        let t_next = ((&t * &t * 4.0 + 1.0).sqrt() + 1.0) / 2.0;
        let diff = &w_next - &w;
        let y_next = &w_next + &diff * ((&t - 1.0) / &t_next);
        let rel = diff.norm_scalaropt_dim(2, &[1i64][..], true)
            / w_next
                .norm_scalaropt_dim(2, &[1i64][..], true)
                .clamp_min(1e-300);
        // restart: keep w, y = w, t = 1; frozen heads keep everything
        y = y_next.where_self(&restart.logical_not(), &w);
        t = t_next.where_self(&restart.logical_not(), &Tensor::ones_like(&t));
        f_prev = f_next.where_self(&restart.logical_not(), &f_prev);
        w = w_next.where_self(&restart.logical_not(), &w);
        done = done.logical_or(&restart.logical_not().logical_and(&rel.lt(1e-10)));
        if (it + 1) % CHECK_EVERY == 0 && done.all().int64_value(&[]) != 0 {
            break;
        }
    }
    w.masked_fill(&degenerate, 0.0).clamp_min(0.0)
}
