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
