//! The one top-k selection shared by train-time policies and post-hoc eviction compressors,
//! so that "trained for scorer S" and "evaluated with scorer S" keep identical slots on
//! identical caches.
//!
//! Per row (every index but the last, typically `[batch, kv_heads]`), the `kept`
//! highest-scoring slots of the last dimension are kept, as kvpress's `ScorerPress` does with
//! `torch.topk`. Unlike `torch.topk`, ties are broken deterministically: equal scores go to
//! the lower slot index first. Every kvcat cache holds its slots in original-position order
//! (prefill appends in order, compressors gather in ascending slot order), so this is "score,
//! then position". A NaN score ranks below every number, so a broken scorer cannot push NaN
//! slots ahead of real ones.

use tch::{Kind, Tensor};

/// Scores with NaN replaced by `-inf`, so NaN never outranks a number.
fn ranked(scores: &Tensor) -> Tensor {
    scores.masked_fill(&scores.isnan(), f64::NEG_INFINITY)
}

/// Indices of the `kept` highest `scores` along the last dimension, in ascending slot order.
///
/// `scores`: `[.., slots]` (any float kind); returns `[.., k]` int64 with
/// `k = clamp(kept, 0, slots)`. Ties go to the lower slot index.
pub fn topk_slots(scores: &Tensor, kept: i64) -> Tensor {
    let slots = scores.size().last().copied().unwrap_or(0);
    let k = kept.clamp(0, slots);
    // A stable descending sort keeps equal scores in ascending index order.
    let (_, order) = ranked(scores).sort_stable(true, -1, true);
    let (idx, _) = order.narrow(-1, 0, k).sort(-1, false);
    idx
}

/// A bool keep mask shaped like `scores` (`[.., slots]`): `true` at the slots
/// [`topk_slots`] keeps. With `kept >= slots` every slot is kept.
pub fn topk_mask(scores: &Tensor, kept: i64) -> Tensor {
    let slots = scores.size().last().copied().unwrap_or(0);
    if kept >= slots {
        return Tensor::ones(scores.size(), (Kind::Bool, scores.device()));
    }
    let idx = topk_slots(scores, kept);
    Tensor::zeros(scores.size(), (Kind::Bool, scores.device())).scatter_value(-1, &idx, 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn t(v: &[f32], shape: &[i64]) -> Tensor {
        Tensor::from_slice(v).view(shape)
    }

    fn ints(x: &Tensor) -> Vec<i64> {
        Vec::<i64>::try_from(x.flatten(0, -1)).unwrap_or_default()
    }

    #[test]
    fn keeps_the_highest_scores_in_slot_order() {
        let s = t(&[0.1, 0.9, 0.5, 0.7, 0.2, 0.3, 0.8, 0.0], &[2, 4]);
        assert_eq!(ints(&topk_slots(&s, 2)), vec![1, 3, 1, 2]);
        let m = topk_mask(&s, 2);
        assert_eq!(m.kind(), Kind::Bool);
        assert_eq!(m.size(), vec![2, 4]);
        let want = t(&[0., 1., 0., 1., 0., 1., 1., 0.], &[2, 4]).to_kind(Kind::Bool);
        assert!(m.equal(&want));
    }

    #[test]
    fn ties_go_to_the_lower_slot_index() {
        // All equal: the first `kept` slots, whatever the size (topk would not promise this).
        for n in [5i64, 64, 1000] {
            let s = Tensor::ones([3, n], (Kind::Float, Device::Cpu));
            let idx = topk_slots(&s, 4);
            let want = Tensor::arange(4, (Kind::Int64, Device::Cpu)).expand([3, 4], false);
            assert!(idx.equal(&want), "n = {n}: {idx}");
        }
        // A tie at the boundary: 0.5 at slots 1, 2, 4; keep the top one and the earliest 0.5.
        let s = t(&[0.1, 0.5, 0.5, 0.9, 0.5], &[1, 5]);
        assert_eq!(ints(&topk_slots(&s, 2)), vec![1, 3]);
        assert_eq!(ints(&topk_slots(&s, 3)), vec![1, 2, 3]);
    }

    #[test]
    fn nan_ranks_last_and_budgets_are_clamped() {
        let s = t(&[f32::NAN, 0.2, f32::NEG_INFINITY, 0.1], &[1, 4]);
        assert_eq!(ints(&topk_slots(&s, 2)), vec![1, 3]);
        assert_eq!(ints(&topk_slots(&s, 3)), vec![0, 1, 3]);
        assert_eq!(ints(&topk_slots(&s, 10)), vec![0, 1, 2, 3]);
        assert_eq!(topk_slots(&s, 0).size(), vec![1, 0]);
        assert!(topk_mask(&s, 4).all().int64_value(&[]) == 1);
        assert_eq!(topk_mask(&s, 0).sum(Kind::Int64).int64_value(&[]), 0);
    }

    #[test]
    fn works_on_batched_heads_and_double_scores() {
        tch::manual_seed(0);
        let s = Tensor::randn([2, 3, 17], (Kind::Double, Device::Cpu));
        let m = topk_mask(&s, 5);
        let per_row = m.sum_dim_intlist(-1, false, Kind::Int64);
        assert!(per_row.equal(&Tensor::full([2, 3], 5, (Kind::Int64, Device::Cpu))));
        // Every kept score is at least every dropped score in its row.
        let kept_min = s
            .masked_fill(&m.logical_not(), f64::INFINITY)
            .amin([-1], false);
        let drop_max = s.masked_fill(&m, f64::NEG_INFINITY).amax([-1], false);
        assert!(kept_min.ge_tensor(&drop_max).all().int64_value(&[]) == 1);
    }
}
