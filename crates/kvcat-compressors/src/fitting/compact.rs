//! The closed-form compaction of one KV head (Zweiger et al. 2026, "Fast KV Compaction via
//! Attention Matching").
//!
//! Given reference queries `Q` `[n, d]`, the head's keys `K` and values `V` `[s, d]` and the
//! per-slot logit offset `o` `[s]` (the cache's bias; `-inf` for hidden slots), find `t` slots
//! `(K', β, V')` such that, for every reference query `q`:
//! - attention **mass** matches: `Σ_i exp(q·K'_i/√d + β_i) ≈ Σ_j exp(q·K_j/√d + o_j)`, so the
//!   compacted block mixes correctly with tokens appended later;
//! - attention **output** matches: `softmax(qK'ᵀ/√d + β) V' ≈ softmax(qKᵀ/√d + o) V`.
//!
//! Steps, all in f64: keys are a subset of the original keys (highest RMS attention over the
//! reference queries, or OMP on the mass system); `w = exp(β) ≥ 0` from NNLS on the mass
//! system with rows normalised by the original mass (a relative error per query); values from
//! ridge least squares on the outputs, regularised towards the original values of the kept
//! slots (so an exact fit is never perturbed).

use super::nnls::{self, Method};
use kvcat_core::{Error, Result};
use tch::{Kind, Tensor};

/// How the kept keys are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySelection {
    /// The `t` keys with the highest root-mean-square attention probability over the queries.
    RmsAttention,
    /// Orthogonal matching pursuit on the normalised mass system, adding `batch` keys per step
    /// and refitting the weights by NNLS each time.
    Omp { batch: usize },
}

/// Options of [`compact_head`].
#[derive(Debug, Clone, Copy)]
pub struct CompactOptions {
    pub selection: KeySelection,
    pub nnls: Method,
    pub nnls_max_iter: usize,
    /// Relative ridge `λ = ridge · tr(XᵀX)/t` of the value least squares.
    pub ridge: f64,
    /// Floor of the mass weights before `β = ln w` (a weight of 0 becomes `ln(floor)`).
    pub weight_floor: f64,
    /// Fit values by least squares (else keep the original values of the kept keys).
    pub fit_values: bool,
    /// Fit β by NNLS (else β = 0).
    pub fit_bias: bool,
}

impl Default for CompactOptions {
    fn default() -> Self {
        CompactOptions {
            selection: KeySelection::RmsAttention,
            nnls: Method::Auto { exact_max: 96 },
            nnls_max_iter: 500,
            ridge: 1e-6,
            weight_floor: 1e-12,
            fit_values: true,
            fit_bias: true,
        }
    }
}

/// One compacted head: kept slot indices `[t]` (ascending), keys and values `[t, d]` (f64),
/// bias β `[t]` (f64), and the relative output error on the fitting queries.
#[derive(Debug)]
pub struct HeadFit {
    pub index: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    pub bias: Tensor,
    /// `‖O' − O‖_F / ‖O‖_F` on the reference queries.
    pub rel_output_error: f64,
    /// RMS of `Σ w_i A_i / m − 1` (relative mass error) on the reference queries.
    pub rel_mass_error: f64,
}

/// Compacts one head to `t` slots. Shapes: `q` `[n, d]`, `k`, `v` `[s, d]`, `offset` `[s]`
/// (or `None` for all zeros). `t` is clamped to the number of visible slots.
pub fn compact_head(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    offset: Option<&Tensor>,
    t: i64,
    opts: &CompactOptions,
) -> Result<HeadFit> {
    let (qs, ks, vs) = (q.size(), k.size(), v.size());
    if qs.len() != 2 || ks.len() != 2 || ks != vs || qs[1] != ks[1] || qs[0] < 1 {
        return Err(Error::invalid(format!(
            "compact_head: expected q [n, d], k and v [s, d]; got {qs:?}, {ks:?}, {vs:?}"
        )));
    }
    let r = Reference::new(q, k, v, offset);
    let n_visible = r.visible.sum(Kind::Int64).int64_value(&[]);
    let t = t.clamp(1, n_visible.max(1));
    let index = r.select(t, opts)?;
    let a_sel = r.a_norm.index_select(1, &index); // [n, t]
    let (w, rel_mass_error) = fit_mass(&a_sel, t, opts)?;
    let bias = w.log();
    let k_sel = r.k.index_select(0, &index);
    let v_sel = r.v.index_select(0, &index);
    // compacted attention probabilities with β: x_qi ∝ a_qi w_i
    let xw = &a_sel * w.unsqueeze(0);
    let x = &xw
        / xw.sum_dim_intlist(&[1i64][..], true, Kind::Double)
            .clamp_min(1e-300);
    let v_fit = if opts.fit_values {
        fit_values(&x, &r.out, &v_sel, t, opts)?
    } else {
        v_sel
    };
    let err = (x.matmul(&v_fit) - &r.out).norm().double_value(&[]);
    let rel_output_error = err / r.out.norm().double_value(&[]).max(1e-300);
    Ok(HeadFit {
        index,
        k: k_sel,
        v: v_fit,
        bias,
        rel_output_error,
        rel_mass_error,
    })
}

/// The head's exact attention on the reference queries, in f64 on the CPU.
struct Reference {
    /// Keys and values `[s, d]`.
    k: Tensor,
    v: Tensor,
    /// `[s]` bool: slots the offset does not hide.
    visible: Tensor,
    /// Attention probabilities `[n, s]`.
    probs: Tensor,
    /// Attention outputs `[n, d]`.
    out: Tensor,
    /// The row-normalised mass system `[n, s]` (target: all ones).
    a_norm: Tensor,
}

impl Reference {
    /// `q` `[n, d]` over `k`, `v` `[s, d]` with the additive `offset` `[s]` (hidden slots
    /// at `-inf` get exactly zero mass).
    fn new(q: &Tensor, k: &Tensor, v: &Tensor, offset: Option<&Tensor>) -> Reference {
        let cpu = tch::Device::Cpu;
        let q = q.to_device(cpu).to_kind(Kind::Double);
        let k = k.to_device(cpu).to_kind(Kind::Double);
        let v = v.to_device(cpu).to_kind(Kind::Double);
        let ks = k.size();
        let scale = 1.0 / (ks[1] as f64).sqrt();
        let mut logits = q.matmul(&k.tr()) * scale; // [n, s]
        let visible = match offset {
            Some(o) => {
                let o = o.to_device(cpu).to_kind(Kind::Double);
                logits += o.unsqueeze(0);
                o.isfinite()
            }
            None => Tensor::ones([ks[0]], (Kind::Bool, cpu)),
        };
        let shift = logits.amax(&[1i64][..], true); // [n, 1]
        let e = (&logits - &shift).exp(); // [n, s], hidden slots exactly 0
        let mass = e.sum_dim_intlist(&[1i64][..], true, Kind::Double); // [n, 1]
        let probs = &e / &mass;
        let out = probs.matmul(&v); // [n, d]
        let a_norm = &e / &mass;
        Reference {
            k,
            v,
            visible,
            probs,
            out,
            a_norm,
        }
    }

    /// The `t` kept slots `[t]`, ascending: by RMS attention, or by OMP on the mass system.
    fn select(&self, t: i64, opts: &CompactOptions) -> Result<Tensor> {
        let rms = self
            .probs
            .pow_tensor_scalar(2)
            .mean_dim(&[0i64][..], false, Kind::Double)
            .sqrt()
            .masked_fill(&self.visible.logical_not(), -1.0);
        let index = match opts.selection {
            KeySelection::RmsAttention => rms.topk(t, 0, true, true).1,
            KeySelection::Omp { batch } => {
                mass_omp_select(&self.a_norm, &self.visible, &rms, t, batch.max(1), opts)?
            }
        };
        Ok(index.sort(0, false).0)
    }
}

/// The mass weights `w` `[t]` (floored at `weight_floor`; β = log w) that make the kept
/// columns `a_sel` `[n, t]` sum to one per query, by NNLS (all ones without `fit_bias`),
/// and the RMS relative mass error.
fn fit_mass(a_sel: &Tensor, t: i64, opts: &CompactOptions) -> Result<(Tensor, f64)> {
    let cpu = tch::Device::Cpu;
    let ones = Tensor::ones([a_sel.size()[0]], (Kind::Double, cpu));
    let w = if opts.fit_bias {
        nnls::nnls(a_sel, &ones, opts.nnls, opts.nnls_max_iter)?
    } else {
        Tensor::ones([t], (Kind::Double, cpu))
    };
    let w = w.clamp_min(opts.weight_floor);
    let rel_mass_error = (a_sel.mv(&w) - &ones)
        .pow_tensor_scalar(2)
        .mean(Kind::Double)
        .sqrt()
        .double_value(&[]);
    Ok((w, rel_mass_error))
}

/// Values `[t, d]` that reproduce the outputs `out` `[n, d]` under the compacted
/// probabilities `x` `[n, t]`: ridge least squares pulled towards the kept values `v_sel`.
fn fit_values(
    x: &Tensor,
    out: &Tensor,
    v_sel: &Tensor,
    t: i64,
    opts: &CompactOptions,
) -> Result<Tensor> {
    let xtx = x.tr().matmul(x);
    let lambda = opts.ridge * xtx.trace().double_value(&[]) / t as f64;
    let lhs = &xtx + Tensor::eye(t, (Kind::Double, tch::Device::Cpu)) * lambda.max(1e-300);
    let rhs = x.tr().matmul(out) + v_sel * lambda.max(1e-300);
    kvcat_core::spd::solve_spd(&lhs, &rhs)
}

/// Greedy OMP on one head's mass system `a` `[n, s]` (target: all ones) restricted to
/// `visible` slots: each step adds the `batch` unselected columns most correlated with the
/// residual, then refits NNLS. Once the mass is matched (RMS relative residual below 1e-3),
/// further mass columns only fit noise, so the remaining slots go to the highest `rms`
/// attention scores `[s]`. Returns the `t` chosen slot indices `[t]`.
///
/// The `attention_matching` *policy* has its own, batched OMP over mass-and-output Gram
/// matrices with ridge refits: `kvcat_policies::attention_matching::gram_omp_select`.
fn mass_omp_select(
    a: &Tensor,
    visible: &Tensor,
    rms: &Tensor,
    t: i64,
    batch: usize,
    opts: &CompactOptions,
) -> Result<Tensor> {
    let n = a.size()[0];
    let cpu = tch::Device::Cpu;
    let ones = Tensor::ones([n], (Kind::Double, cpu));
    let col_norm = a
        .norm_scalaropt_dim(2, &[0i64][..], false)
        .clamp_min(1e-300);
    let chosen = visible.logical_not(); // hidden slots are never chosen
    let mut selected: Vec<i64> = Vec::with_capacity(t as usize);
    let mut residual = ones.copy();
    while (selected.len() as i64) < t {
        let corr = a.tr().mv(&residual) / &col_norm;
        let corr = corr.masked_fill(&chosen, f64::NEG_INFINITY);
        let take = (batch as i64).min(t - selected.len() as i64);
        let (_, idx) = corr.topk(take, 0, true, true);
        let idx: Vec<i64> = idx.try_into()?;
        for &j in &idx {
            let _ = chosen.get(j).fill_(1);
            selected.push(j);
        }
        let sel = Tensor::from_slice(&selected);
        let a_sel = a.index_select(1, &sel);
        let w = nnls::nnls(&a_sel, &ones, opts.nnls, opts.nnls_max_iter)?;
        residual = &ones - a_sel.mv(&w);
        let rel = residual.norm().double_value(&[]) / (n as f64).sqrt();
        let left = t - selected.len() as i64;
        if rel < 1e-3 && left > 0 {
            let (_, idx) = rms.masked_fill(&chosen, -2.0).topk(left, 0, true, true);
            selected.extend(Vec::<i64>::try_from(idx)?);
            break;
        }
    }
    Ok(Tensor::from_slice(&selected))
}
