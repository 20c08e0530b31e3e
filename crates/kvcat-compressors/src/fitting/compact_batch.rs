//! The closed-form compaction of [`compact_head`](super::compact::compact_head) (Zweiger et al.
//! 2026, "Fast KV Compaction via Attention Matching") for all heads of a layer at once, on the
//! cache's device: RMS-attention key selection, batched NNLS for the mass weights
//! ([`nnls_batch`](super::nnls_batch)), and one batched ridge solve for the values. A layer
//! costs a constant number of kernel launches and no per-head host round-trip.
//!
//! A head with fewer than `t` visible slots also picks some hidden ones (their attention is
//! exactly 0, so they get no mass and keep their own values); the keep mask hides them again.

use super::compact::CompactOptions;
use super::nnls_batch::nnls_batch;
use kvcat_core::{Error, Result};
use tch::{Kind, Tensor};

/// All heads compacted: `index` `[H, t]` (ascending), `k`, `v` `[H, t, d]` f64, `bias` `[H, t]`
/// f64, `visible` `[H, t]` bool (false for picks of hidden slots), and per head the relative
/// output and mass errors on the reference queries `[H]` f64.
#[derive(Debug)]
pub struct HeadsFit {
    pub index: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    pub bias: Tensor,
    pub visible: Tensor,
    pub rel_output_error: Tensor,
    pub rel_mass_error: Tensor,
}

/// `x` `[H, s, ..]` gathered at `index` `[H, t]` along dim 1.
fn gather_rows(x: &Tensor, index: &Tensor) -> Tensor {
    let s = x.size();
    let mut shape = index.size();
    shape.extend_from_slice(&s[2..]);
    let mut idx = index.shallow_clone();
    for _ in 2..s.len() {
        idx = idx.unsqueeze(-1);
    }
    x.gather(1, &idx.expand(shape.as_slice(), false), false)
}

/// Compacts every head to `t` slots with RMS-attention key selection. Shapes: `q` `[H, n, d]`,
/// `k`, `v` `[H, s, d]`, `offset` `[H, s]` (the cache's bias, `-inf` for hidden slots; `None`
/// for all zeros). `t` must be in `1..=s`.
pub fn compact_heads(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    offset: Option<&Tensor>,
    t: i64,
    opts: &CompactOptions,
) -> Result<HeadsFit> {
    let (qs, ks) = (q.size(), k.size());
    if qs.len() != 3 || ks.len() != 3 || v.size() != ks || qs[0] != ks[0] || qs[2] != ks[2] {
        return Err(Error::invalid(format!(
            "compact_heads: expected q [H, n, d], k and v [H, s, d]; got {qs:?}, {ks:?}, {:?}",
            v.size()
        )));
    }
    if t < 1 || t > ks[1] {
        return Err(Error::invalid(format!(
            "compact_heads: t = {t} must be in 1..={}",
            ks[1]
        )));
    }
    let f = Kind::Double;
    let att = ReferenceAttention::new(q, k, v, offset);
    let index = att.top_rms(t); // [H, t]
    let picks = att.probs.gather(
        2,
        &index.unsqueeze(1).expand([qs[0], qs[1], t], false),
        false,
    ); // [H, n, t], in the attention's precision, like the NNLS on its Gram matrix
    let w = mass_weights(&picks, opts)?.to_kind(f);
    let a_sel = picks.to_kind(f);
    let (out, visible) = (att.out, att.visible);
    let ones = Tensor::ones([qs[0], qs[1]], (f, k.device()));
    let rel_mass_error = (bmv(&a_sel, &w) - &ones)
        .pow_tensor_scalar(2)
        .mean_dim(&[1i64][..], false, f)
        .sqrt();
    let v_sel = gather_rows(v, &index).to_kind(f);
    let xw = &a_sel * w.unsqueeze(1);
    let x = &xw / xw.sum_dim_intlist(&[2i64][..], true, f).clamp_min(1e-300); // [H, n, t]
    let picked_visible = visible.gather(1, &index, false);
    let v_fit = if opts.fit_values {
        let kept = picked_visible
            .sum_dim_intlist(&[1i64][..], true, f)
            .clamp_min(1.0);
        ridge_values(&x, &out, &v_sel, opts.ridge, &kept)?
    } else {
        v_sel
    };
    let err = (x.matmul(&v_fit) - &out).norm_scalaropt_dim(2, &[1i64, 2][..], false);
    let rel_output_error = err
        / out
            .norm_scalaropt_dim(2, &[1i64, 2][..], false)
            .clamp_min(1e-300);
    Ok(HeadsFit {
        k: gather_rows(k, &index).to_kind(f),
        v: v_fit,
        bias: w.log(),
        visible: picked_visible,
        index,
        rel_output_error,
        rel_mass_error,
    })
}

/// The original attention of the reference queries, in the cache's precision (f64 caches stay
/// f64, anything else runs in f32, as the model's own softmax does): the `[H, n, s]` part of a
/// fit, which dominates its memory traffic. The NNLS for β then iterates in that precision
/// too (its exact solver and the value least squares run in f64). On SmolLM2 at 4,096 tokens
/// (budget 0.25) this took a compression from 41 s to 26 s on 2 CPU threads with the same fit
/// error (0.0340 both) and continuation KL 0.0692 against 0.0688 (docs/benchmarks/performance.md).
struct ReferenceAttention {
    /// Row-normalised attention `[H, n, s]` (hidden slots exactly 0): the mass system.
    probs: Tensor,
    /// Original outputs `[H, n, d]`, f64.
    out: Tensor,
    /// Visible slots `[H, s]` bool.
    visible: Tensor,
}

impl ReferenceAttention {
    fn new(q: &Tensor, k: &Tensor, v: &Tensor, offset: Option<&Tensor>) -> Self {
        let work = if k.kind() == Kind::Double {
            Kind::Double
        } else {
            Kind::Float
        };
        let (q, k) = (q.to_kind(work), k.to_kind(work));
        let (heads, slots, d) = (k.size()[0], k.size()[1], k.size()[2]);
        let mut logits = q.matmul(&k.transpose(1, 2)) * (1.0 / (d as f64).sqrt()); // [H, n, s]
        let visible = match offset {
            Some(o) => {
                logits += o.to_kind(work).unsqueeze(1);
                o.isfinite()
            }
            None => Tensor::ones([heads, slots], (Kind::Bool, k.device())),
        };
        let shift = logits.amax(&[2i64][..], true);
        let mut probs = logits;
        let _ = probs.g_sub_(&shift).exp_();
        let mass = probs.sum_dim_intlist(&[2i64][..], true, work);
        let _ = probs.g_div_(&mass);
        let out = probs.matmul(&v.to_kind(work)).to_kind(Kind::Double);
        ReferenceAttention {
            probs,
            out,
            visible,
        }
    }

    /// The `t` visible slots of highest root-mean-square attention per head, ascending:
    /// `[H, t]` (a head with fewer visible slots also gets hidden ones). Ranks by the L2 norm
    /// over the queries, which orders slots as the RMS does.
    fn top_rms(&self, t: i64) -> Tensor {
        let norm = self
            .probs
            .norm_scalaropt_dim(2, &[1i64][..], false)
            .masked_fill(&self.visible.logical_not(), -1.0);
        norm.topk(t, 1, true, true).1.sort(1, false).0
    }
}

/// `A x` for `a` `[H, n, p]`, `x` `[H, p]`: `[H, n]`.
fn bmv(a: &Tensor, x: &Tensor) -> Tensor {
    a.bmm(&x.unsqueeze(2)).squeeze_dim(2)
}

/// Mass weights `w = exp(β)` `[H, t]` from NNLS on `a_sel` `[H, n, t]` against all ones,
/// floored at `opts.weight_floor` (or all ones when β is not fitted), in the kind of `a_sel`.
/// The exact solver (small `t`) gets an f64 system; projected gradient iterates in the kind of
/// `a_sel`, so an f32 system streams half the bytes per Gram product.
fn mass_weights(a_sel: &Tensor, opts: &CompactOptions) -> Result<Tensor> {
    let s = a_sel.size();
    if !opts.fit_bias {
        return Ok(Tensor::ones([s[0], s[2]], (a_sel.kind(), a_sel.device())));
    }
    let kind = a_sel.kind();
    let a_sel = if opts.nnls.is_exact(s[2] as usize) {
        a_sel.to_kind(Kind::Double)
    } else {
        a_sel.shallow_clone()
    };
    let a_sel = &a_sel;
    let g = a_sel.transpose(1, 2).bmm(a_sel); // [H, t, t]
    let h = a_sel.sum_dim_intlist(&[1i64][..], false, a_sel.kind()); // Aᵀ1: [H, t]
    let w = nnls_batch(&g, &h, opts.nnls, opts.nnls_max_iter)?;
    Ok(w.clamp_min(opts.weight_floor).to_kind(kind))
}

/// Ridge least squares for the values, regularised towards the kept originals: per head
/// `(XᵀX + λI) V' = XᵀO + λ V_sel` with `λ = ridge · tr(XᵀX) / kept` (`kept` `[H, 1]`: the
/// visible picks, as the per-head fit counts them). `x` `[H, n, t]`, `out` `[H, n, d]`,
/// `v_sel` `[H, t, d]` → `[H, t, d]`.
fn ridge_values(
    x: &Tensor,
    out: &Tensor,
    v_sel: &Tensor,
    ridge: f64,
    kept: &Tensor,
) -> Result<Tensor> {
    let t = x.size()[2];
    let xt = x.transpose(1, 2);
    let xtx = xt.bmm(x);
    let trace = xtx
        .diagonal(0, 1, 2)
        .sum_dim_intlist(&[1i64][..], true, Kind::Double);
    let lambda = (trace * ridge / kept).clamp_min(1e-300).unsqueeze(2); // [H, 1, 1]
    let eye = Tensor::eye(t, (Kind::Double, x.device())).unsqueeze(0);
    let lhs = &xtx + eye * &lambda;
    let rhs = xt.bmm(out) + v_sel * &lambda;
    kvcat_core::spd::solve_spd(&lhs, &rhs)
}
