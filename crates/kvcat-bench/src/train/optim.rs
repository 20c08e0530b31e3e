//! AdamW (Loshchilov & Hutter, 2019) over named variables, written out so that its state
//! (moments, f32 master weights, step) saves and loads as safetensors for bit-for-bit resume.
//!
//! Parameters held in a low-precision dtype (bf16 on CUDA) get an f32 master copy: the update
//! happens in f32 and is cast back. Weight decay applies to tensors of rank ≥ 2 only (not to
//! norm gains or biases).

use super::config::OptimConfig;
use super::cpu_loops;
use kvcat_core::error::ResultExt;
use kvcat_core::{Error, Result};
use std::collections::HashMap;
use std::path::Path;
use tch::{Kind, Tensor};

/// One optimised tensor.
struct Slot {
    name: String,
    param: Tensor,
    master: Option<Tensor>,
    m: Tensor,
    v: Tensor,
    decay: bool,
}

/// AdamW with decoupled weight decay.
pub struct AdamW {
    slots: Vec<Slot>,
    cfg: OptimConfig,
    /// Completed optimiser steps.
    pub step: i64,
    /// [`cpu_loops::adamw_update`]'s scratch, kept between steps.
    scratch: Tensor,
}

impl AdamW {
    /// Optimises `vars` (name → trainable tensor), in name order.
    pub fn new(mut vars: Vec<(String, Tensor)>, cfg: &OptimConfig) -> Self {
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let slots = vars
            .into_iter()
            .map(|(name, param)| {
                let master = (param.kind() != Kind::Float)
                    .then(|| param.detach().to_kind(Kind::Float).copy());
                let opts = (Kind::Float, param.device());
                Slot {
                    m: Tensor::zeros(param.size(), opts),
                    v: Tensor::zeros(param.size(), opts),
                    decay: param.dim() >= 2,
                    name,
                    param,
                    master,
                }
            })
            .collect();
        AdamW {
            slots,
            cfg: cfg.clone(),
            step: 0,
            scratch: Tensor::new(),
        }
    }

    /// Clears every gradient.
    pub fn zero_grad(&mut self) {
        for s in &mut self.slots {
            s.param.zero_grad();
        }
    }

    /// The global gradient L2 norm; when `max > 0` and it exceeds `max`, scales the gradients
    /// down to norm `max`. Returns the norm before clipping.
    pub fn clip_grad_norm(&mut self, max: f64) -> f64 {
        let _g = tch::no_grad_guard();
        let norm = self.grad_sum_of_squares().sqrt();
        if max > 0.0 && norm > max {
            let scale = max / (norm + 1e-6);
            for s in &self.slots {
                let mut g = s.param.grad();
                if g.defined() {
                    let _ = g.g_mul_scalar_(scale);
                }
            }
        }
        norm
    }

    /// `Σ g²` over every gradient, each value widened to f64 before squaring: one-pass loops
    /// for f32 CPU gradients ([`cpu_loops::sum_of_squares_f64`]), tensor ops summed on the
    /// device otherwise, read back once.
    fn grad_sum_of_squares(&self) -> f64 {
        let mut on_cpu = Vec::new();
        let mut on_device: Option<Tensor> = None;
        for s in &self.slots {
            let g = s.param.grad();
            if !g.defined() {
                continue;
            }
            if cpu_loops::cpu_f32(&g) {
                on_cpu.push(g);
                continue;
            }
            // squared in place: a copy even when the gradient is f64 already, which must not
            // be squared
            let mut g64 = g.to_dtype(Kind::Double, false, true);
            let sq = g64.pow_(2).sum(Kind::Double);
            on_device = Some(match on_device {
                Some(total) => total + sq,
                None => sq,
            });
        }
        cpu_loops::sum_of_squares_f64(&on_cpu) + on_device.map_or(0.0, |t| t.double_value(&[]))
    }

    /// One update at learning rate `lr`.
    pub fn step(&mut self, lr: f64) {
        let _g = tch::no_grad_guard();
        self.step += 1;
        let c = &self.cfg;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2 = 1.0 - c.beta2.powi(self.step as i32);
        // f32 CPU parameters: one-pass loops over all of them at the end (bit for bit the
        // arithmetic below)
        let mut on_cpu = Vec::new();
        for s in &mut self.slots {
            let g = s.param.grad();
            if !g.defined() {
                continue;
            }
            if s.master.is_none() && cpu_loops::cpu_f32(&g) && cpu_loops::cpu_f32(&s.param) {
                on_cpu.push(cpu_loops::AdamWTensors {
                    w: s.param.shallow_clone(),
                    m: s.m.shallow_clone(),
                    v: s.v.shallow_clone(),
                    g,
                    decay: s.decay && c.weight_decay > 0.0,
                });
                continue;
            }
            // The same arithmetic as `m = β₁m + (1−β₁)g; v = β₂v + (1−β₂)g²;
            // w −= lr·(m/bc₁)/(√(v/bc₂) + ε)`, with the temporaries updated in place: four
            // allocations per parameter instead of nine, bit for bit the same result.
            let g = g.to_kind(Kind::Float);
            let _ = s.m.g_mul_scalar_(c.beta1);
            let _ = s.m.g_add_(&(&g * (1.0 - c.beta1)));
            let _ = s.v.g_mul_scalar_(c.beta2);
            let mut g2 = g.pow_tensor_scalar(2);
            let _ = s.v.g_add_(&g2.g_mul_scalar_(1.0 - c.beta2));
            let mut denom = &s.v / bc2;
            let _ = denom.sqrt_().g_add_scalar_(c.eps);
            let mut update = &s.m / bc1;
            let _ = update.g_div_(&denom).g_mul_scalar_(-lr);
            let w = match &mut s.master {
                Some(m) => m,
                None => &mut s.param,
            };
            if s.decay && c.weight_decay > 0.0 {
                let _ = w.g_mul_scalar_(1.0 - lr * c.weight_decay);
            }
            let _ = w.g_add_(&update);
            if let Some(m) = &s.master {
                s.param.copy_(&m.to_kind(s.param.kind()));
            }
        }
        let k = cpu_loops::AdamWScalars {
            beta1: c.beta1 as f32,
            one_minus_beta1: (1.0 - c.beta1) as f32,
            beta2: c.beta2 as f32,
            one_minus_beta2: (1.0 - c.beta2) as f32,
            bc1: bc1 as f32,
            bc2: bc2 as f32,
            eps: c.eps as f32,
            neg_lr: -lr as f32,
            decay: (1.0 - lr * c.weight_decay) as f32,
        };
        cpu_loops::adamw_update(&on_cpu, &k, &mut self.scratch);
        for p in &on_cpu {
            bump_version(&p.w);
        }
    }

    /// Saves moments, master weights and the step count as safetensors.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut named: Vec<(String, Tensor)> =
            vec![("step".into(), Tensor::from_slice(&[self.step]))];
        for s in &self.slots {
            named.push((format!("m.{}", s.name), s.m.to_device(tch::Device::Cpu)));
            named.push((format!("v.{}", s.name), s.v.to_device(tch::Device::Cpu)));
            if let Some(w) = &s.master {
                named.push((format!("master.{}", s.name), w.to_device(tch::Device::Cpu)));
            }
        }
        let tmp = path.with_extension("safetensors.tmp");
        Tensor::write_safetensors(&named, &tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
        Ok(())
    }

    /// Restores the state written by [`AdamW::save`]; every variable must be present.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let file = path.display().to_string();
        let tensors: HashMap<String, Tensor> = Tensor::read_safetensors(path)
            .with_context(|| format!("reading optimizer state {file}"))?
            .into_iter()
            .collect();
        let get = |name: &str| {
            tensors.get(name).ok_or_else(|| Error::MissingTensors {
                file: file.clone(),
                names: vec![name.to_string()],
            })
        };
        let step = get("step")?.int64_value(&[0]);
        let _g = tch::no_grad_guard();
        for s in &mut self.slots {
            for (key, dst) in [("m", &mut s.m), ("v", &mut s.v)] {
                let t = get(&format!("{key}.{}", s.name))?;
                if t.size() != dst.size() {
                    return Err(Error::Shape {
                        file,
                        tensor: format!("{key}.{}", s.name),
                        expected: dst.size(),
                        got: t.size(),
                    });
                }
                dst.copy_(t);
            }
            if let Some(w) = &mut s.master {
                w.copy_(get(&format!("master.{}", s.name))?);
            }
        }
        self.step = step;
        Ok(())
    }
}

/// Marks `t` as modified in place for autograd's version counter, which a write through its raw
/// storage does not do. Caches keyed on the version (the fused inference weights,
/// `kvcat_core::model::FusedWeight`) rely on it. Multiplies one element by 1 (exact, keeps
/// −0 and NaN), through a view that shares `t`'s counter.
fn bump_version(t: &Tensor) {
    if t.numel() > 0 {
        let _ = t.view([-1]).narrow(0, 0, 1).g_mul_scalar_(1.0);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    /// The in-place step is the textbook AdamW arithmetic, bit for bit: training runs (and
    /// the quickstart's results) do not move when the temporaries are reused.
    #[test]
    fn step_equals_the_textbook_arithmetic_bit_for_bit() {
        tch::manual_seed(3);
        let cfg = OptimConfig::default();
        // a small matrix, a vector (no weight decay) and one large enough for the CPU loop
        // to split across threads
        for shape in [vec![7, 5], vec![6], vec![300, 700]] {
            let w0 = Tensor::randn(&shape, (Kind::Float, tch::Device::Cpu));
            let param = w0.copy().set_requires_grad(true);
            let mut opt = AdamW::new(vec![("w".into(), param.shallow_clone())], &cfg);
            let (mut w, mut m, mut v) = (w0.copy(), w0.zeros_like(), w0.zeros_like());
            let decay = if shape.len() >= 2 {
                cfg.weight_decay
            } else {
                0.0
            };
            for step in 1..=4 {
                let g = Tensor::randn(&shape, (Kind::Float, tch::Device::Cpu));
                opt.zero_grad();
                (&param * &g).sum(Kind::Float).backward(); // the gradient is g
                let _g = tch::no_grad_guard();
                let lr = 1e-2 / step as f64;
                let version = param.internal_version();
                opt.step(lr);
                assert!(
                    param.internal_version() > version,
                    "the update bumps the version"
                );
                let bc1 = 1.0 - cfg.beta1.powi(step);
                let bc2 = 1.0 - cfg.beta2.powi(step);
                m = &m * cfg.beta1 + &g * (1.0 - cfg.beta1);
                v = &v * cfg.beta2 + g.pow_tensor_scalar(2) * (1.0 - cfg.beta2);
                let update = (&m / bc1) / ((&v / bc2).sqrt() + cfg.eps);
                w = &w * (1.0 - lr * decay) + update * (-lr);
                assert!(param.equal(&w), "{shape:?}: step {step} differs");
            }
        }
    }

    /// A bf16 parameter (as on CUDA) steps through its f32 master copy with the tensor ops
    /// while an f32 parameter of the same optimiser takes the CPU loops: both follow the
    /// textbook arithmetic bit for bit, and the clip's norm counts both kinds of gradient.
    #[test]
    fn bf16_masters_and_f32_loops_step_side_by_side() {
        tch::manual_seed(5);
        let cfg = OptimConfig::default();
        let cpu = tch::Device::Cpu;
        let a0 = Tensor::randn([7, 5], (Kind::Float, cpu));
        let b0 = Tensor::randn([4, 6], (Kind::Float, cpu)).to_kind(Kind::BFloat16);
        let a = a0.copy().set_requires_grad(true);
        let b = b0.copy().set_requires_grad(true);
        let named = vec![
            ("a".into(), a.shallow_clone()),
            ("b".into(), b.shallow_clone()),
        ];
        let mut opt = AdamW::new(named, &cfg);
        let mut want_a = (a0.copy(), a0.zeros_like(), a0.zeros_like());
        let master = b0.to_kind(Kind::Float);
        let mut want_b = (master.copy(), master.zeros_like(), master.zeros_like());
        let textbook = |(w, m, v): &mut (Tensor, Tensor, Tensor), g: &Tensor, lr: f64, t: i32| {
            let bc1 = 1.0 - cfg.beta1.powi(t);
            let bc2 = 1.0 - cfg.beta2.powi(t);
            *m = &*m * cfg.beta1 + g * (1.0 - cfg.beta1);
            *v = &*v * cfg.beta2 + g.pow_tensor_scalar(2) * (1.0 - cfg.beta2);
            let update = (&*m / bc1) / ((&*v / bc2).sqrt() + cfg.eps);
            *w = &*w * (1.0 - lr * cfg.weight_decay) + update * (-lr);
        };
        for step in 1..=3 {
            let ga = Tensor::randn([7, 5], (Kind::Float, cpu));
            let gb = Tensor::randn([4, 6], (Kind::Float, cpu)).to_kind(Kind::BFloat16);
            opt.zero_grad();
            let loss = (&a * &ga).sum(Kind::Float) + (&b * &gb).sum(Kind::Float);
            loss.backward();
            let _g = tch::no_grad_guard();
            let want_norm = [&ga, &gb]
                .map(|g| {
                    g.to_kind(Kind::Double)
                        .square()
                        .sum(Kind::Double)
                        .double_value(&[])
                })
                .iter()
                .sum::<f64>()
                .sqrt();
            let norm = opt.clip_grad_norm(0.0); // 0: measure only
            assert!(
                (norm - want_norm).abs() <= 1e-14 * want_norm,
                "{norm} vs {want_norm}"
            );
            let lr = 1e-2 / step as f64;
            opt.step(lr);
            textbook(&mut want_a, &ga, lr, step);
            textbook(&mut want_b, &gb.to_kind(Kind::Float), lr, step);
            assert!(a.equal(&want_a.0), "f32 parameter, step {step}");
            assert!(
                b.equal(&want_b.0.to_kind(Kind::BFloat16)),
                "bf16 parameter, step {step}"
            );
        }
    }

    /// The clip's norm is the textbook `√Σ g²` in f64 (to the last bits: the sum runs in
    /// another order), and it scales the gradients by `max / (norm + 1e-6)`.
    #[test]
    fn clip_norm_equals_the_textbook_arithmetic() {
        tch::manual_seed(4);
        let cfg = OptimConfig::default();
        let opts = (Kind::Float, tch::Device::Cpu);
        let params = [
            Tensor::randn([9, 4], opts),
            Tensor::randn([6], opts),
            Tensor::randn([400, 500], opts),
        ]
        .map(|p| p.set_requires_grad(true));
        let named = params.iter().enumerate();
        let mut opt = AdamW::new(
            named
                .map(|(i, p)| (format!("p{i}"), p.shallow_clone()))
                .collect(),
            &cfg,
        );
        let loss = params.iter().map(|p| (p * p).sum(Kind::Float) * 3.0);
        let loss = loss.reduce(|a, b| a + b).unwrap();
        loss.backward();
        let grads: Vec<Tensor> = params.iter().map(|p| p.grad().copy()).collect();
        let want: f64 = grads
            .iter()
            .map(|g| {
                g.to_kind(Kind::Double)
                    .pow_tensor_scalar(2)
                    .sum(Kind::Double)
                    .double_value(&[])
            })
            .sum::<f64>()
            .sqrt();
        let norm = opt.clip_grad_norm(1.0);
        assert!((norm - want).abs() <= 1e-14 * want, "{norm} vs {want}");
        let scale = 1.0 / (norm + 1e-6);
        for (p, g) in params.iter().zip(&grads) {
            assert!(p.grad().equal(&(g * scale)));
        }
    }
}
