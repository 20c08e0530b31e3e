//! NNLS: a hand-solved case, and on random problems never a negative weight plus the KKT
//! conditions of optimality (for both solvers).

#![allow(clippy::unwrap_used)]

use kvcat_compressors::fitting::nnls::{self, Method};
use tch::{Device, Kind, Tensor};

fn t2(rows: &[&[f64]]) -> Tensor {
    let flat: Vec<f64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_slice(&flat).view([rows.len() as i64, rows[0].len() as i64])
}

#[test]
fn hand_case_with_an_active_constraint() {
    // The unconstrained LS solution is (2, -1). With w ≥ 0 the second weight is 0 and the
    // first is (a₁ᵀb)/(a₁ᵀa₁) = 3/2.
    let a = t2(&[&[1.0, 0.0], &[0.0, 1.0], &[1.0, 1.0]]);
    let b = Tensor::from_slice(&[2.0, -1.0, 1.0]);
    for m in [Method::LawsonHanson, Method::ProjectedGradient] {
        let w: Vec<f64> = nnls::nnls(&a, &b, m, 5000).unwrap().try_into().unwrap();
        let tol = if m == Method::LawsonHanson {
            1e-10
        } else {
            1e-6
        };
        assert!((w[0] - 1.5).abs() < tol, "{m:?} {w:?}");
        assert_eq!(w[1], 0.0, "{m:?} {w:?}");
    }
    // An interior solution equals plain least squares.
    let b = Tensor::from_slice(&[1.0, 2.0, 3.0]);
    let w: Vec<f64> = nnls::nnls(&a, &b, Method::LawsonHanson, 0)
        .unwrap()
        .try_into()
        .unwrap();
    assert!(
        (w[0] - 1.0).abs() < 1e-10 && (w[1] - 2.0).abs() < 1e-10,
        "{w:?}"
    );
}

#[test]
fn random_problems_are_non_negative_and_satisfy_kkt() {
    tch::manual_seed(7);
    for trial in 0..16 {
        let (n, p) = (5 + trial % 30, 2 + (trial * 7) % 25);
        // mixed-sign data so that many constraints are active
        let a = Tensor::randn([n, p], (Kind::Double, Device::Cpu));
        let b = Tensor::randn([n], (Kind::Double, Device::Cpu));
        let (g, h) = nnls::normal_equations(&a, &b).unwrap();
        let exact = nnls::lawson_hanson(&g, &h).unwrap();
        let pg = nnls::projected_gradient(&g, &h, None, 5_000);
        for (name, w) in [("lawson_hanson", &exact), ("projected_gradient", &pg)] {
            let min = w.min().double_value(&[]);
            assert!(min >= 0.0, "{name}: negative weight {min} (trial {trial})");
        }
        // KKT for the exact solver: gradient h − Gw is ≈ 0 on positive weights, ≤ 0 on zeros.
        let grad = &h - g.mv(&exact);
        let scale = h.abs().max().double_value(&[]).max(1.0);
        let wv: Vec<f64> = exact.shallow_clone().try_into().unwrap();
        let gv: Vec<f64> = grad.try_into().unwrap();
        for (j, (&w, &gr)) in wv.iter().zip(&gv).enumerate() {
            if w > 0.0 {
                assert!(
                    gr.abs() < 1e-7 * scale,
                    "trial {trial} j {j}: w {w} grad {gr}"
                );
            } else {
                assert!(
                    gr < 1e-7 * scale,
                    "trial {trial} j {j}: zero weight with grad {gr}"
                );
            }
        }
        // The iterative solver reaches the same objective.
        let obj = |w: &Tensor| {
            (a.mv(w) - &b)
                .pow_tensor_scalar(2)
                .sum(Kind::Double)
                .double_value(&[])
        };
        let (fe, fp) = (obj(&exact), obj(&pg));
        assert!(
            fp <= fe * (1.0 + 1e-4) + 1e-9,
            "trial {trial}: pg {fp} vs exact {fe}"
        );
    }
}
