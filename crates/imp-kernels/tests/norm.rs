//! LayerNorm and RMSNorm against candle-nn's reference (`*_slow`) ops.

use imp_kernels::norm::{layer_norm, layer_norm_slice, rms_norm, rms_norm_slice};
use imp_kernels::simd;
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::support::{
    assert_close, assert_paths_match_scalar, random, rounded, tensor, to, values, HALF_DTYPES,
};

/// Widths: SigLIP, Phi-2, and one with a tail.
const NORM_WIDTHS: [usize; 3] = [1152, 2560, 1001];

#[test]
fn norms_match_candle() {
    let mut rng = StdRng::seed_from_u64(4);
    for width in NORM_WIDTHS {
        // An offset mean, as residual streams have.
        let x: Vec<f32> = random(&mut rng, 7 * width, 3.0)
            .into_iter()
            .map(|v| v + 2.0)
            .collect();
        let x = tensor(x, &[1, 7, width]);
        let weight = tensor(random(&mut rng, width, 2.0), &[width]);
        let bias = tensor(random(&mut rng, width, 1.0), &[width]);
        for eps in [1e-6, 1e-5] {
            let want = candle_nn::ops::layer_norm_slow(&x, &weight, &bias, eps as f32).unwrap();
            assert_close(
                "layer norm",
                &values(&layer_norm(&x, &weight, &bias, eps).unwrap()),
                &values(&want),
                2e-6,
            );
            let want = candle_nn::ops::rms_norm_slow(&x, &weight, eps as f32).unwrap();
            assert_close(
                "rms norm",
                &values(&rms_norm(&x, &weight, eps).unwrap()),
                &values(&want),
                2e-6,
            );
        }
    }
}

#[test]
fn norms_in_half_precision_round_the_f32_result() {
    let mut rng = StdRng::seed_from_u64(5);
    let width = 2560;
    let x = tensor(random(&mut rng, 3 * width, 3.0), &[3, width]);
    let weight = tensor(random(&mut rng, width, 2.0), &[width]);
    let bias = tensor(random(&mut rng, width, 1.0), &[width]);
    for (dtype, ulp) in HALF_DTYPES {
        let half = |t| to(t, dtype);
        let wide = |t| rounded(t, dtype);
        let got = layer_norm(&half(&x), &half(&weight), &half(&bias), 1e-5).unwrap();
        let want =
            candle_nn::ops::layer_norm_slow(&wide(&x), &wide(&weight), &wide(&bias), 1e-5).unwrap();
        assert_close("layer norm", &values(&got), &values(&half(&want)), ulp);
        let got = rms_norm(&half(&x), &half(&weight), 1e-5).unwrap();
        let want = candle_nn::ops::rms_norm_slow(&wide(&x), &wide(&weight), 1e-5).unwrap();
        assert_close("rms norm", &values(&got), &values(&half(&want)), ulp);
    }
}

#[test]
fn norm_simd_paths_match_scalar() {
    let mut rng = StdRng::seed_from_u64(6);
    for width in NORM_WIDTHS {
        let x = random(&mut rng, 5 * width, 4.0);
        let weight = random(&mut rng, width, 2.0);
        let bias = random(&mut rng, width, 1.0);
        // Sums of thousands of values in another order.
        assert_paths_match_scalar("layer norm", &simd::PATHS, 4e-6, |isa| {
            let mut y = vec![0f32; x.len()];
            layer_norm_slice(isa, &x, &weight, &bias, 1e-6, &mut y).unwrap();
            y
        });
        assert_paths_match_scalar("rms norm", &simd::PATHS, 4e-6, |isa| {
            let mut y = vec![0f32; x.len()];
            rms_norm_slice(isa, &x, &weight, 1e-6, &mut y).unwrap();
            y
        });
    }
}

#[test]
fn norm_rejects_rows_that_do_not_fit_the_weights() {
    let mut y = vec![0f32; 10];
    let isa = simd::best();
    assert!(rms_norm_slice(isa, &[0f32; 10], &[1f32; 4], 1e-6, &mut y).is_err());
    assert!(layer_norm_slice(isa, &[0f32; 8], &[1f32; 4], &[0f32; 3], 1e-6, &mut y[..8]).is_err());
}
