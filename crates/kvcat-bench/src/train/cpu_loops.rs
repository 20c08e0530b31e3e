//! One-pass CPU loops over f32 storage for the optimiser's two memory-bound steps: AdamW's
//! update and the gradient norm. Written as tensor ops they sweep every parameter's memory many
//! times (AdamW with in-place temporaries: about twenty passes; the f64 norm: an f64 copy of
//! every gradient). On SmolLM2-135M (135 M parameters, 2-core CPU) that was 0.37 s + 0.14 s a
//! step; these loops take 0.134 s + 0.011 s (three sweeps for AdamW, one for the norm), against
//! 0.245 s + 0.020 s for `torch.optim.AdamW(foreach=True)` and its clip.
//!
//! Each loop performs, element by element, the same IEEE f32 (or f64) operations in the same
//! order as the tensor ops it replaces, and AdamW's square root stays libtorch's, so its result
//! is bit for bit the same (`optim::tests`). The norm's f64 sum runs in a different order than
//! libtorch's reduction, so it can differ from the tensor-op norm in the last f64 bits (up to
//! 3e-14 relative over the quickstart's 3,000 logged stage-1 norms; its checkpoints stayed
//! bit-identical).
//!
//! Only contiguous f32 CPU tensors take these paths ([`cpu_f32`]); others (bf16 master weights,
//! CUDA) keep the tensor ops.

use std::ops::Range;
use std::sync::Mutex;
use tch::{Device, Kind, Tensor};

/// Elements per chunk below which a loop stays on the calling thread.
const MIN_PARALLEL: usize = 1 << 16;

/// Whether `t` is a contiguous f32 tensor in CPU memory (so its storage is one `[f32]`).
pub fn cpu_f32(t: &Tensor) -> bool {
    t.defined() && t.device() == Device::Cpu && t.kind() == Kind::Float && t.is_contiguous()
}

/// `t`'s elements as a slice.
///
/// # Safety
/// `t` passes [`cpu_f32`], and nothing writes to its storage while the slice lives.
unsafe fn as_slice(t: &Tensor) -> &[f32] {
    let n = t.numel();
    if n == 0 {
        return &[];
    }
    // SAFETY: contiguous f32 CPU storage of `n` elements (the caller's contract).
    unsafe { std::slice::from_raw_parts(t.data_ptr() as *const f32, n) }
}

/// Runs `work(i, range)` over tensors of `lens[i]` elements seen as one flat index space
/// `0..Σ lens`, split into one contiguous span per libtorch intra-op thread (one span when the
/// total is small): one thread spawn per sweep serves every tensor. Each call gets tensor `i`'s
/// local range within one thread's span.
fn for_each_part(lens: &[usize], work: impl Fn(usize, Range<usize>) + Sync) {
    let total: usize = lens.iter().sum();
    let threads = (tch::get_num_threads().max(1) as usize)
        .min(total / MIN_PARALLEL)
        .max(1);
    let per = total.div_ceil(threads).max(1);
    let span = |lo: usize, hi: usize| {
        let mut start = 0;
        for (i, &n) in lens.iter().enumerate() {
            let (a, b) = (lo.max(start), hi.min(start + n));
            if a < b {
                work(i, a - start..b - start);
            }
            start += n;
        }
    };
    std::thread::scope(|scope| {
        for lo in (per..total).step_by(per) {
            let span = &span;
            scope.spawn(move || span(lo, (lo + per).min(total)));
        }
        span(0, per.min(total));
    });
}

/// `Σ x²` over contiguous f32 CPU tensors, each value widened to f64 before squaring.
pub fn sum_of_squares_f64(ts: &[Tensor]) -> f64 {
    assert!(
        ts.iter().all(cpu_f32),
        "sum_of_squares_f64 needs contiguous f32 CPU tensors"
    );
    // SAFETY: checked above; only read here.
    let xs: Vec<&[f32]> = ts.iter().map(|t| unsafe { as_slice(t) }).collect();
    let lens: Vec<usize> = xs.iter().map(|x| x.len()).collect();
    let total = Mutex::new(0.0f64);
    for_each_part(&lens, |i, r| {
        let s = sum_squares(&xs[i][r]);
        *total.lock().unwrap_or_else(|e| e.into_inner()) += s;
    });
    total.into_inner().unwrap_or_else(|e| e.into_inner())
}

/// Eight independent f64 accumulators, so the loop vectorises and is not bound by add latency.
fn sum_squares(x: &[f32]) -> f64 {
    let mut acc = [0.0f64; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            let d = v as f64;
            *a += d * d;
        }
    }
    let tail: f64 = tail.iter().map(|&v| (v as f64) * (v as f64)).sum();
    acc.iter().sum::<f64>() + tail
}

/// The scalars of one AdamW step, each cast to f32 as libtorch casts a double scalar for an
/// f32 tensor op.
#[derive(Debug, Clone, Copy)]
pub struct AdamWScalars {
    pub beta1: f32,
    pub one_minus_beta1: f32,
    pub beta2: f32,
    pub one_minus_beta2: f32,
    /// Bias corrections `1 − β₁ᵗ`, `1 − β₂ᵗ`.
    pub bc1: f32,
    pub bc2: f32,
    pub eps: f32,
    pub neg_lr: f32,
    /// `1 − lr·weight_decay`, applied to the tensors with `decay` set.
    pub decay: f32,
}

/// One parameter's tensors for [`adamw_update`]: weight `w`, moments `m`, `v` and gradient `g`,
/// contiguous f32 CPU tensors of one size in four distinct storages (and no two parameters of
/// a group share a weight).
pub struct AdamWTensors {
    pub w: Tensor,
    pub m: Tensor,
    pub v: Tensor,
    pub g: Tensor,
    /// Whether weight decay applies.
    pub decay: bool,
}

/// One AdamW step of every parameter in `group`, in place:
/// `m = β₁m + (1−β₁)g; v = β₂v + (1−β₂)g²; w = w·(1 − lr·λ) + (−lr)·(m/bc₁)/(√(v/bc₂) + ε)`.
///
/// Three sweeps over the whole group:
/// 1. a loop for the moments and `v/bc₂`, into the flat f32 `scratch` (grown to the group's
///    total size when smaller, and kept by the caller: a fresh buffer would page-fault every
///    step, 125 ms for SmolLM2);
/// 2. libtorch's own `sqrt_` on it, in one call (its vectorised square root is not correctly
///    rounded, and training runs must not move);
/// 3. a loop for the weights.
///
/// So libtorch's threads and this module's take turns only twice a step. Autograd's version
/// counters are not bumped: the caller does that.
pub fn adamw_update(group: &[AdamWTensors], k: &AdamWScalars, scratch: &mut Tensor) {
    for p in group {
        let n = p.w.numel();
        let parts = [&p.w, &p.m, &p.v, &p.g];
        assert!(
            parts.iter().all(|t| cpu_f32(t) && t.numel() == n),
            "adamw_update needs contiguous f32 CPU tensors of one size"
        );
        let storages = parts.map(|t| t.data_ptr() as usize);
        assert!(
            n == 0 || (0..4).all(|i| (i + 1..4).all(|j| storages[i] != storages[j])),
            "adamw_update's tensors must not share storage"
        );
    }
    let group: Vec<&AdamWTensors> = group.iter().filter(|p| p.w.numel() > 0).collect();
    let weights: std::collections::HashSet<usize> =
        group.iter().map(|p| p.w.data_ptr() as usize).collect();
    assert!(
        weights.len() == group.len(),
        "adamw_update's parameters must not share storage"
    );
    let lens: Vec<usize> = group.iter().map(|p| p.w.numel()).collect();
    let offsets: Vec<usize> = lens
        .iter()
        .scan(0, |o, &n| Some(std::mem::replace(o, *o + n)))
        .collect();
    let total: i64 = lens.iter().sum::<usize>() as i64;
    if !scratch.defined() || scratch.numel() < total as usize {
        *scratch = Tensor::empty([total], (Kind::Float, Device::Cpu));
    }
    let mut root = scratch.narrow(0, 0, total);
    let rs = Shared(root.data_ptr() as *mut f32);
    let ptrs = |t: fn(&AdamWTensors) -> &Tensor| -> Vec<Shared> {
        group
            .iter()
            .map(|p| Shared(t(p).data_ptr() as *mut f32))
            .collect()
    };
    let (ws, ms, vs) = (ptrs(|p| &p.w), ptrs(|p| &p.m), ptrs(|p| &p.v));
    // SAFETY: checked contiguous f32 CPU storages, only read while the loops run.
    let gs: Vec<&[f32]> = group.iter().map(|p| unsafe { as_slice(&p.g) }).collect();
    let decays: Vec<Option<f32>> = group.iter().map(|p| p.decay.then_some(k.decay)).collect();
    // SAFETY (both loops): every pointer is a checked contiguous f32 CPU storage of `lens[i]`
    // elements (`root`: of `total`), distinct from the parameter's other three;
    // `for_each_part` hands each thread disjoint ranges.
    for_each_part(&lens, |i, r| unsafe {
        let root = rs.offset(offsets[i]).range(&r);
        moments_range(ms[i].range(&r), vs[i].range(&r), root, &gs[i][r], k);
    });
    let _ = root.sqrt_();
    for_each_part(&lens, |i, r| unsafe {
        let root = rs.offset(offsets[i]).range(&r);
        weights_range(ws[i].range(&r), ms[i].range(&r), root, decays[i], k);
    });
}

/// `m = β₁m + (1−β₁)g; v = β₂v + (1−β₂)g²; out = v/bc₂`. Indexed over slices cut to one
/// length, so the compiler drops the bounds checks and vectorises.
fn moments_range(m: &mut [f32], v: &mut [f32], out: &mut [f32], g: &[f32], k: &AdamWScalars) {
    let n = m.len();
    let (v, out, g) = (&mut v[..n], &mut out[..n], &g[..n]);
    for i in 0..n {
        let gi = g[i];
        m[i] = m[i] * k.beta1 + gi * k.one_minus_beta1;
        v[i] = v[i] * k.beta2 + (gi * gi) * k.one_minus_beta2;
        out[i] = v[i] / k.bc2;
    }
}

/// `w = w·decay + ((m/bc₁)/(root + ε))·(−lr)`, with `root = √(v/bc₂)`; the decay branch is
/// outside the loop so that both loops vectorise.
fn weights_range(w: &mut [f32], m: &[f32], root: &[f32], decay: Option<f32>, k: &AdamWScalars) {
    let n = w.len();
    let (m, root) = (&m[..n], &root[..n]);
    let update = |i: usize| ((m[i] / k.bc1) / (root[i] + k.eps)) * k.neg_lr;
    match decay {
        Some(d) => (0..n).for_each(|i| w[i] = w[i] * d + update(i)),
        None => (0..n).for_each(|i| w[i] += update(i)),
    }
}

/// A storage's base pointer handed to the worker threads, each of which takes disjoint ranges.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: only used by `adamw_update`, whose threads touch disjoint ranges.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// The pointer `n` elements on.
    ///
    /// # Safety
    /// `n` lies within the storage.
    unsafe fn offset(self, n: usize) -> Shared {
        // SAFETY: the caller's contract.
        Shared(unsafe { self.0.add(n) })
    }

    /// # Safety
    /// `r` lies within the storage, and no other live slice overlaps it.
    unsafe fn range<'a>(self, r: &Range<usize>) -> &'a mut [f32] {
        // SAFETY: the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(r.start), r.len()) }
    }
}
