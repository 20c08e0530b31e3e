//! Decoding from a (possibly compressed) cache: greedy generation and continuation NLL.
//! New tokens are positioned from `cache.seq_len`, the original length.

use crate::cache::KvCache;
use crate::model::{ForwardOptions, Llama, Logits};
use crate::Result;
use tch::{Kind, Tensor};

/// Greedy decoding of up to `max_new` tokens after feeding `prompt` (`[1, t]`, may be the
/// question appended to a compressed context). Stops at any id in `stop`. Returns new ids.
pub fn greedy(
    model: &Llama,
    cache: &mut KvCache,
    prompt: &Tensor,
    max_new: usize,
    stop: &[i64],
) -> Result<Vec<i64>> {
    let _guard = tch::no_grad_guard();
    let opts = ForwardOptions {
        logits: Logits::Last,
        ..Default::default()
    };
    let mut out = Vec::with_capacity(max_new);
    let mut next_in = prompt.shallow_clone();
    for _ in 0..max_new {
        let logits = model
            .forward_with(&next_in, cache, &opts)?
            .logits
            .expect("Logits::Last computes logits");
        let id = logits.get(0).get(0).argmax(-1, false).int64_value(&[]);
        if stop.contains(&id) {
            break;
        }
        out.push(id);
        next_in = Tensor::from_slice(&[id])
            .view([1, 1])
            .to_device(model.device());
    }
    Ok(out)
}

/// Summed negative log-likelihood (nats) and token count of `continuation` `[b, c]` given
/// `cache` and the logits `last_logits` `[b, vocab]` that predict its first token.
pub fn continuation_nll(
    model: &Llama,
    cache: &mut KvCache,
    last_logits: &Tensor,
    continuation: &Tensor,
) -> Result<(f64, i64)> {
    let _guard = tch::no_grad_guard();
    let logits = model.forward(continuation, cache)?; // [b, c, V]
    let c = continuation.size()[1];
    let all = Tensor::cat(&[last_logits.unsqueeze(1), logits.narrow(1, 0, c - 1)], 1)
        .to_kind(Kind::Float);
    let logp = all.log_softmax(-1, Kind::Float);
    let tgt = continuation.to_device(logp.device()).unsqueeze(-1);
    let nll = -logp
        .gather(-1, &tgt, false)
        .sum(Kind::Double)
        .double_value(&[]);
    Ok((nll, continuation.numel() as i64))
}
