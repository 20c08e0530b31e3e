//! A minimal Adam (Kingma & Ba 2015) over free tensors, without a `VarStore`: `kv_fit`'s
//! parameters are per-call tensors, not model variables.

use kvcat_core::Result;
use tch::Tensor;

/// Adam state for a fixed list of parameters (β₁ 0.9, β₂ 0.999, ε 1e-8).
pub struct Adam {
    lr: f64,
    step: i32,
    m1: Vec<Tensor>,
    m2: Vec<Tensor>,
}

impl Adam {
    /// State for `params` (zero moments).
    pub fn new(params: &[&Tensor], lr: f64) -> Self {
        Adam {
            lr,
            step: 0,
            m1: params.iter().map(|t| t.zeros_like()).collect(),
            m2: params.iter().map(|t| t.zeros_like()).collect(),
        }
    }

    /// One bias-corrected update of `params` in place from their `grads` (same order).
    pub fn step(&mut self, params: &[&Tensor], grads: &[Tensor]) -> Result<()> {
        let _g = tch::no_grad_guard();
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8);
        self.step += 1;
        let c1 = 1.0 - b1.powi(self.step);
        let c2 = 1.0 - b2.powi(self.step);
        for (i, g) in grads.iter().enumerate() {
            self.m1[i] = &self.m1[i] * b1 + g * (1.0 - b1);
            self.m2[i] = &self.m2[i] * b2 + g.pow_tensor_scalar(2) * (1.0 - b2);
            let upd = (&self.m1[i] / c1) / ((&self.m2[i] / c2).sqrt() + eps) * self.lr;
            let mut t = params[i].shallow_clone();
            let _ = t.f_sub_(&upd)?;
        }
        Ok(())
    }
}

/// Loss values are read back to the host once per this many steps (a GPU keeps queueing work
/// in between).
pub const CHECK_EVERY: usize = 10;

/// When an Adam fit stops: after `steps` steps, or once the best loss has not improved by a
/// relative `tol` for `patience` steps (checked every [`CHECK_EVERY`] steps, so up to
/// `CHECK_EVERY − 1` further steps may run after the rule fires).
#[derive(Debug, Clone, Copy)]
pub struct StopRule {
    pub steps: usize,
    pub tol: f64,
    pub patience: usize,
}

/// Minimises `loss()` (a scalar with gradient to `params`) by Adam at rate `lr` under `rule`,
/// with autograd gradients. Returns the loss before each step taken. A non-finite loss is an
/// error naming `what` and the step.
pub fn minimise(
    params: &[&Tensor],
    lr: f64,
    rule: StopRule,
    what: &str,
    mut loss: impl FnMut() -> Result<Tensor>,
) -> Result<Vec<f64>> {
    minimise_with_grads(params, lr, rule, what, || {
        let l = loss()?;
        let grads = Tensor::f_run_backward(&[&l], params, false, false)?;
        Ok((l.detach(), grads))
    })
}

/// [`minimise`] with the gradients supplied by the caller: `loss_and_grads()` returns the loss
/// and the gradient of each of `params` (same order), e.g. from a closed form.
pub fn minimise_with_grads(
    params: &[&Tensor],
    lr: f64,
    rule: StopRule,
    what: &str,
    mut loss_and_grads: impl FnMut() -> Result<(Tensor, Vec<Tensor>)>,
) -> Result<Vec<f64>> {
    let mut adam = Adam::new(params, lr);
    let mut losses = Vec::with_capacity(rule.steps + 1);
    let mut pending = Vec::with_capacity(CHECK_EVERY);
    let (mut best, mut stale) = (f64::INFINITY, 0usize);
    for step in 1..=rule.steps {
        if params.is_empty() {
            break;
        }
        let (l, grads) = loss_and_grads()?;
        pending.push(l.to_kind(tch::Kind::Double));
        adam.step(params, &grads)?;
        if pending.len() < CHECK_EVERY && step < rule.steps {
            continue;
        }
        let values: Vec<f64> = Tensor::stack(&pending, 0).try_into()?;
        pending.clear();
        let mut stop = false;
        for lv in values {
            if !lv.is_finite() {
                let at = losses.len() + 1;
                return Err(kvcat_core::Error::invalid(format!(
                    "{what}: the loss became {lv} at step {at}; lower `lr` (now {lr})"
                )));
            }
            losses.push(lv);
            if lv < best * (1.0 - rule.tol) {
                best = lv;
                stale = 0;
            } else {
                stale += 1;
                stop |= stale >= rule.patience;
            }
        }
        if stop {
            break;
        }
    }
    Ok(losses)
}
