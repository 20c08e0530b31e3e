//! The KV-CAT training loss for one micro-batch:
//!
//! `w_mask · NTP(continuation | masked) + w_kd · KL(teacher ‖ masked student) on the
//! continuation + w_full · NTP(sequence | unmasked) + policy regulariser`.
//!
//! The masked pass runs all `T` tokens in one forward with a per-layer attention bias
//! ([`kvcat_core::MaskPlan::layer_bias`]): prefix queries attend causally to the full prefix
//! (as in prefill), continuation queries only to the kept prefix slots plus the causal
//! continuation — exactly what a compressed cache shows them at inference. The continuation
//! NTP predicts tokens `P..T` from positions `P−1..T−1` (position `P−1` is the last prefill
//! position, as in compressed-prefix perplexity).
//!
//! The teacher pass (unmasked, no gradient) supplies the policy's captures and, for
//! `teacher = "current"`, the distillation targets. When `w_full > 0` with the current model as
//! teacher, the unmasked pass with gradient doubles as the teacher pass (its outputs detached),
//! and the masked pass reuses it too: prefix queries see the same keys masked or not, so the
//! prefix keys and values (with their gradient) are those of the unmasked pass, and only the
//! `T − P` continuation tokens are run again, over that prefix cache with the plan's bias
//! ([`masked_continuation_logits`]). The loss then costs `1 + (T − P)/T` forward–backward
//! passes instead of 2.

use super::config::{LossConfig, TeacherChoice};
use kvcat_core::model::{ForwardOptions, ForwardOutput, Logits};
use kvcat_core::summary::summarize;
use kvcat_core::{Error, KvCache, LayerCache, Llama, MaskPlan, MaskingPolicy, PolicyInput, Result};
use rand::rngs::StdRng;
use tch::{Kind, Reduction, Tensor};

/// The loss of one micro-batch: the differentiable total and each term's value.
pub struct LossTerms {
    /// The weighted sum (scalar f32, with gradient).
    pub total: Tensor,
    /// NTP of the continuation under the mask (nats/token), when computed.
    pub mask: Option<f64>,
    /// KL(teacher ‖ masked student) on the continuation (nats/token), when computed.
    pub kd: Option<f64>,
    /// NTP of the whole sequence unmasked (nats/token), when computed.
    pub full: Option<f64>,
    /// The policy's regulariser, when it has one.
    pub reg: Option<f64>,
    pub prefix_len: i64,
    /// Kept prefix slots per layer and KV head.
    pub kept: i64,
}

/// Mean cross-entropy of predicting `labels[:, from..T]` from `logits[:, from−1..T−1]`, over
/// the scored labels (`labels` holds token ids, or `-100` where a token is not scored; 0 when
/// none is). `logits` `[b, T, V]`, `labels` `[b, T]`; `1 ≤ from < T`.
pub fn ntp(logits: &Tensor, labels: &Tensor, from: i64) -> Tensor {
    let t = labels.size()[1];
    ntp_rows(
        &logits.narrow(1, from - 1, t - from),
        &labels.narrow(1, from, t - from),
    )
}

/// Mean cross-entropy of the labels `tgt` `[b, n]` (token ids, or `-100` where a token is not
/// scored) under the logits `pred` `[b, n, V]`, over the scored labels (0 when none is).
pub fn ntp_rows(pred: &Tensor, tgt: &Tensor) -> Tensor {
    let v = pred.size()[2];
    let pred = pred.to_kind(Kind::Float);
    let tgt = tgt.to_device(pred.device()).reshape([-1]);
    let sum =
        pred.reshape([-1, v])
            .cross_entropy_loss::<Tensor>(&tgt, None, Reduction::Sum, -100, 0.0);
    // Divide on the device (no host read): a batch with nothing scored gives 0, not NaN.
    let scored = tgt.ne(-100).sum(Kind::Float).clamp_min(1.0);
    sum / scored
}

/// Mean over positions `from−1..T−1` of `τ² · KL(softmax(teacher/τ) ‖ softmax(student/τ))`.
pub fn kl_divergence(teacher: &Tensor, student: &Tensor, from: i64, tau: f64) -> Tensor {
    let t = student.size()[1];
    let rows = |x: &Tensor| x.narrow(1, from - 1, t - from);
    kl_rows(&rows(teacher), &rows(student), tau)
}

/// Mean over rows of `τ² · KL(softmax(teacher/τ) ‖ softmax(student/τ))`, both `[b, n, V]`.
pub fn kl_rows(teacher: &Tensor, student: &Tensor, tau: f64) -> Tensor {
    let v = student.size()[2];
    let pick = |x: &Tensor| (x.to_kind(Kind::Float) / tau).reshape([-1, v]);
    let lt = pick(teacher).log_softmax(-1, Kind::Float);
    let ls = pick(student).log_softmax(-1, Kind::Float);
    let kl = (lt.exp() * (&lt - ls)).sum_dim_intlist(-1, false, Kind::Float);
    kl.mean(Kind::Float) * (tau * tau)
}

/// Logits `[b, T, V]` of `tokens` `[b, T]` under a policy's plan: one forward with the layer
/// bias, or, for a summary plan, the prefix then the continuation over the summarised prefix.
pub fn masked_logits(model: &Llama, tokens: &Tensor, plan: &MaskPlan) -> Result<Tensor> {
    let t = tokens.size()[1];
    let opts = |bias| ForwardOptions {
        layer_bias: bias,
        ..Default::default()
    };
    if plan.summary.is_some() {
        let p = plan.prefix_len;
        let mut prefix = KvCache::new();
        let head = model.forward_with(&tokens.narrow(1, 0, p), &mut prefix, &opts(None))?;
        let head = head
            .logits
            .ok_or_else(|| Error::invalid("prefix forward computed no logits"))?;
        let cont = continuation_logits(model, tokens, plan, &prefix)?;
        return Ok(Tensor::cat(&[head, cont], 1));
    }
    let bias = plan.layer_bias(t, model.kind())?;
    let out = model.forward_with(tokens, &mut KvCache::new(), &opts(Some(&bias)))?;
    out.logits
        .ok_or_else(|| Error::invalid("masked forward computed no logits"))
}

/// The continuation's logits `[b, T − P, V]` (row `i` at continuation token `P + i`, at
/// position `P + i`) over a cache of the first `P` tokens: with the plan's bias rows, or, for a
/// summary plan, over the summarised prefix ([`kvcat_core::summary::summarize`]). Gradient
/// flows into `prefix` and the summary embeddings.
fn continuation_logits(
    model: &Llama,
    tokens: &Tensor,
    plan: &MaskPlan,
    prefix: &KvCache,
) -> Result<Tensor> {
    let (t, p) = (tokens.size()[1], plan.prefix_len);
    let c = t - p;
    let (mut cache, bias) = match &plan.summary {
        Some(sp) => (summarize(model, prefix, &sp.embeddings, &sp.layout)?, None),
        None => {
            let bias: Vec<Tensor> = plan
                .layer_bias(t, model.kind())?
                .iter()
                .map(|b| b.narrow(2, p, c))
                .collect();
            (prefix.prefix(p), Some(bias))
        }
    };
    let positions = Tensor::arange_start(p, t, (Kind::Int64, model.device()));
    let out = model.forward_at(
        &tokens.narrow(1, p, c),
        &positions,
        &mut cache,
        &ForwardOptions {
            layer_bias: bias.as_deref(),
            ..Default::default()
        },
    )?;
    out.logits
        .ok_or_else(|| Error::invalid("masked continuation computed no logits"))
}

/// The masked student's logits for positions `P−1 .. T−1` (`[b, T − P, V]`, the rows that
/// predict the continuation), given the unmasked pass with gradient over all `T` tokens: its
/// logits `full` `[b, T, V]` and its cache `unmasked`. Row `P−1` is a prefix query, which no
/// plan masks, so it is `full`'s; the continuation is run again over the unmasked pass's first
/// `P` cached slots (gradient flows into them) with the plan's mask or summaries
/// ([`continuation_logits`]). Equals the same rows of [`masked_logits`].
pub fn masked_continuation_logits(
    model: &Llama,
    tokens: &Tensor,
    plan: &MaskPlan,
    full: &Tensor,
    unmasked: &KvCache,
) -> Result<Tensor> {
    let (t, p) = (tokens.size()[1], plan.prefix_len);
    let prefix = unmasked.prefix(p);
    let cont = continuation_logits(model, tokens, plan, &prefix)?;
    Ok(Tensor::cat(
        &[full.narrow(1, p - 1, 1), cont.narrow(1, 0, t - p - 1)],
        1,
    ))
}

/// Checks a plan against the model and batch: one `[b, kv_heads, P]` bool mask per layer.
pub fn check_plan(model: &Llama, plan: &MaskPlan, b: i64, p: i64, policy: &str) -> Result<()> {
    let cfg = &model.config;
    let want = [b, cfg.num_key_value_heads, p];
    if plan.prefix_len != p || plan.keep.len() != cfg.num_hidden_layers as usize {
        return Err(Error::invalid(format!(
            "policy `{policy}` returned a plan for prefix {} with {} layers; expected prefix {p}, {} layers",
            plan.prefix_len,
            plan.keep.len(),
            cfg.num_hidden_layers
        )));
    }
    for (l, m) in plan.keep.iter().enumerate() {
        if m.size() != want || m.kind() != Kind::Bool {
            return Err(Error::invalid(format!(
                "policy `{policy}`: layer {l} mask has shape {:?} ({:?}), expected {want:?} bool",
                m.size(),
                m.kind()
            )));
        }
    }
    Ok(())
}

fn detach_output(out: &ForwardOutput) -> ForwardOutput {
    let d = |v: &[Tensor]| v.iter().map(Tensor::detach).collect();
    ForwardOutput {
        logits: out.logits.as_ref().map(Tensor::detach),
        queries: d(&out.queries),
        attention: d(&out.attention),
        hidden: d(&out.hidden),
    }
}

fn detach_cache(cache: &KvCache) -> KvCache {
    KvCache {
        layers: cache
            .layers
            .iter()
            .map(|l| LayerCache {
                k: l.k.detach(),
                v: l.v.detach(),
                positions: l.positions.shallow_clone(),
                keep: l.keep.as_ref().map(Tensor::shallow_clone),
                bias: l.bias.as_ref().map(Tensor::detach),
            })
            .collect(),
        seq_len: cache.seq_len,
    }
}

/// Computes the loss of one micro-batch `tokens` `[b, T]` (next-token targets `labels`
/// `[b, T]`, `-100` where unscored; pass `tokens` to score every token) with prefix length
/// `prefix_len` and `kept` prefix slots per head. `frozen` is the frozen starting model when
/// `loss.teacher = "frozen"`.
#[allow(clippy::too_many_arguments)]
pub fn batch_loss(
    model: &Llama,
    frozen: Option<&Llama>,
    policy: &mut dyn MaskingPolicy,
    tokens: &Tensor,
    labels: &Tensor,
    prefix_len: i64,
    kept: i64,
    loss: &LossConfig,
    rng: &mut StdRng,
) -> Result<LossTerms> {
    let b = tokens.size()[0];
    let p = prefix_len;
    let frozen = frozen_teacher(loss, frozen)?;
    let pass = TeacherPass::run(model, frozen, tokens, loss, policy.needs())?;
    let plan = policy.plan(
        &PolicyInput {
            model,
            tokens,
            prefix_len: p,
            kept,
            teacher: &pass.teacher,
            cache: &pass.cache,
        },
        rng,
    )?;
    check_plan(model, &plan, b, p, policy.name())?;

    let device = model.device();
    let mut total = Tensor::zeros([], (Kind::Float, device));
    let mut terms = LossTerms {
        total: Tensor::zeros([], (Kind::Float, device)),
        mask: None,
        kd: None,
        full: None,
        reg: None,
        prefix_len: p,
        kept: plan.kept,
    };
    if loss.w_mask > 0.0 || loss.w_kd > 0.0 {
        total =
            pass.add_continuation_terms(model, tokens, labels, &plan, loss, total, &mut terms)?;
    }
    if let Some(f) = &pass.full_logits {
        let full = ntp(f, labels, 1);
        terms.full = Some(full.double_value(&[]));
        total = total + full * loss.w_full;
    }
    if let Some(r) = policy.regularizer() {
        terms.reg = Some(r.double_value(&[]));
        total = total + r.to_kind(Kind::Float);
    }
    terms.total = total;
    Ok(terms)
}

/// The frozen teacher to distil from: `frozen` when `loss.teacher = "frozen"` (an error if
/// it is missing and KD is on), else `None` (the model's own unmasked pass teaches).
fn frozen_teacher<'a>(loss: &LossConfig, frozen: Option<&'a Llama>) -> Result<Option<&'a Llama>> {
    match (loss.teacher, frozen) {
        (TeacherChoice::Frozen, Some(f)) => Ok(Some(f)),
        (TeacherChoice::Frozen, None) if loss.w_kd > 0.0 => Err(Error::invalid(
            "loss.teacher = \"frozen\" but no frozen teacher was given",
        )),
        _ => Ok(None),
    }
}

/// The unmasked passes of one micro-batch: what the policy plans from, the full NTP
/// logits, and the KD targets.
struct TeacherPass {
    /// The unmasked pass the policy sees (detached when it is also the graph pass).
    teacher: ForwardOutput,
    /// Its cache (detached likewise).
    cache: KvCache,
    /// `[b, T, vocab]` logits of the unmasked pass with grad, when `loss.w_full > 0`.
    full_logits: Option<Tensor>,
    /// The cache of the graph pass, when the teacher pass was it (reused for the masked
    /// continuation).
    graph_cache: Option<KvCache>,
    /// `[b, T, vocab]` KD targets: the frozen model's logits, else the teacher pass's.
    teacher_logits: Option<Tensor>,
}

impl TeacherPass {
    /// With the full NTP term on and no frozen teacher, one pass with grad serves as both
    /// the graph pass and (detached) the teacher; otherwise the teacher pass runs without
    /// grad and the full NTP logits, if wanted, come from a pass of their own.
    fn run(
        model: &Llama,
        frozen: Option<&Llama>,
        tokens: &Tensor,
        loss: &LossConfig,
        needs: kvcat_core::policy::PolicyNeeds,
    ) -> Result<TeacherPass> {
        let caps = |logits: Logits| ForwardOptions {
            capture_queries: needs.queries,
            capture_attention: needs.attention,
            capture_hidden: needs.hidden,
            logits,
            ..Default::default()
        };
        let want_kd = loss.w_kd > 0.0;
        let mut full_logits: Option<Tensor> = None;
        let mut graph_cache: Option<KvCache> = None;
        let (teacher, cache) = if loss.w_full > 0.0 && frozen.is_none() {
            let mut cache = KvCache::new();
            let out = model.forward_with(tokens, &mut cache, &caps(Logits::All))?;
            full_logits = out.logits.as_ref().map(Tensor::shallow_clone);
            let detached = detach_cache(&cache);
            graph_cache = Some(cache);
            (detach_output(&out), detached)
        } else {
            let _g = tch::no_grad_guard();
            let mut cache = KvCache::new();
            let logits = if want_kd && frozen.is_none() {
                Logits::All
            } else {
                Logits::None
            };
            let out = model.forward_with(tokens, &mut cache, &caps(logits))?;
            (out, cache)
        };
        if loss.w_full > 0.0 && full_logits.is_none() {
            full_logits = Some(model.forward(tokens, &mut KvCache::new())?);
        }
        let teacher_logits = match frozen {
            Some(f) if want_kd => Some(tch::no_grad(|| f.forward(tokens, &mut KvCache::new()))?),
            _ => teacher.logits.as_ref().map(Tensor::shallow_clone),
        };
        Ok(TeacherPass {
            teacher,
            cache,
            full_logits,
            graph_cache,
            teacher_logits,
        })
    }

    /// `total` plus the masked NTP term (`w_mask`) and the KD term (`w_kd`) of the
    /// continuation `P..T` under `plan`, both recorded in `terms`.
    #[allow(clippy::too_many_arguments)]
    fn add_continuation_terms(
        &self,
        model: &Llama,
        tokens: &Tensor,
        labels: &Tensor,
        plan: &MaskPlan,
        loss: &LossConfig,
        mut total: Tensor,
        terms: &mut LossTerms,
    ) -> Result<Tensor> {
        let (p, t) = (terms.prefix_len, tokens.size()[1]);
        let identity = plan.soft_bias.is_none() && plan.summary.is_none() && plan.kept >= p;
        // the student's rows P−1..T−1, which predict the continuation
        let student = match (&self.full_logits, &self.graph_cache, identity) {
            (Some(f), _, true) => f.narrow(1, p - 1, t - p),
            (Some(f), Some(cache), false) => {
                masked_continuation_logits(model, tokens, plan, f, cache)?
            }
            _ => masked_logits(model, tokens, plan)?.narrow(1, p - 1, t - p),
        };
        let m = ntp_rows(&student, &labels.narrow(1, p, t - p));
        terms.mask = Some(m.double_value(&[]));
        if loss.w_mask > 0.0 {
            total = total + m * loss.w_mask;
        }
        if let Some(tl) = &self.teacher_logits {
            let kd = kl_rows(&tl.narrow(1, p - 1, t - p), &student, loss.kd_temperature);
            terms.kd = Some(kd.double_value(&[]));
            total = total + kd * loss.w_kd;
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use kvcat_core::{LlamaConfig, Model};
    use tch::Device;

    fn tiny() -> Model {
        tch::manual_seed(3);
        let cfg = LlamaConfig {
            vocab_size: 40,
            intermediate_size: 48,
            max_position_embeddings: 64,
            ..LlamaConfig::tiny()
        };
        Model::from_config(&cfg, Device::Cpu, Kind::Float).unwrap()
    }

    /// Random keep masks with a differentiable soft bias, as a learned policy returns.
    fn plan(b: i64, p: i64, soft: &Tensor) -> MaskPlan {
        let keep = (0..2)
            .map(|_| Tensor::rand([b, 2, p], (Kind::Float, Device::Cpu)).gt(0.4))
            .collect();
        MaskPlan {
            prefix_len: p,
            kept: p / 2,
            keep,
            soft_bias: Some(vec![soft * 1.0, soft * 0.5]),
            summary: None,
        }
    }

    fn grads(model: &Model, soft: &Tensor, loss: &Tensor) -> Vec<Tensor> {
        let mut vars: Vec<Tensor> = model.vs.trainable_variables();
        vars.push(soft.shallow_clone());
        let refs: Vec<&Tensor> = vars.iter().collect();
        Tensor::run_backward(&[loss], &refs, true, false)
    }

    #[test]
    fn continuation_over_the_unmasked_prefix_equals_the_full_masked_pass() {
        let model = tiny();
        let (b, t, p) = (2, 12, 5);
        let tokens = Tensor::randint(40, [b, t], (Kind::Int64, Device::Cpu));
        let soft =
            (Tensor::randn([b, 2, p], (Kind::Float, Device::Cpu)) * 0.3).set_requires_grad(true);
        let plan = plan(b, p, &soft);
        let reference = masked_logits(&model, &tokens, &plan)
            .unwrap()
            .narrow(1, p - 1, t - p);
        let mut cache = KvCache::new();
        let full = model.forward(&tokens, &mut cache).unwrap();
        let shared = masked_continuation_logits(&model, &tokens, &plan, &full, &cache).unwrap();
        assert_eq!(shared.size(), reference.size());
        let diff = (&shared - &reference).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "logits differ by {diff}");
        // the same gradient for every weight and for the soft bias
        let target = tokens.narrow(1, p, t - p);
        let g_ref = grads(&model, &soft, &ntp_rows(&reference, &target));
        let g_shared = grads(&model, &soft, &ntp_rows(&shared, &target));
        for (a, c) in g_ref.iter().zip(&g_shared) {
            let d = (a - c).abs().max().double_value(&[]);
            assert!(d < 1e-5, "gradients differ by {d}");
        }
        assert!(
            g_ref
                .last()
                .unwrap()
                .abs()
                .sum(Kind::Float)
                .double_value(&[])
                > 0.0
        );
    }
}
