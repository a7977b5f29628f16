//! GELU (tanh and erf forms) against candle's `gelu` / `gelu_erf`.

use candle_core::Tensor;
use imp_kernels::gelu::{gelu, gelu_slice, Gelu};
use imp_kernels::simd;
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::support::{
    assert_close, assert_paths_match_scalar, random, rounded, tensor, to, values, HALF_DTYPES,
};

/// Lengths: one MLP row of SigLIP and of Phi-2, and one with a tail shorter than any vector.
const GELU_LENGTHS: [usize; 3] = [4304, 10240, 1003];

type CandleFn = fn(&Tensor) -> candle_core::Result<Tensor>;

/// Each form: ours, and candle's op for it.
const FORMS: [(&str, Gelu, CandleFn); 2] = [
    ("gelu tanh", Gelu::Tanh, Tensor::gelu),
    ("gelu erf", Gelu::Erf, Tensor::gelu_erf),
];

#[test]
fn gelu_matches_candle_in_f32() {
    let mut rng = StdRng::seed_from_u64(1);
    for n in GELU_LENGTHS {
        // Wide enough to reach both saturated ends.
        let x = tensor(random(&mut rng, 3 * n, 12.0), &[3, n]);
        for (what, ours, candle) in FORMS {
            assert_close(
                what,
                &values(&gelu(&x, ours).unwrap()),
                &values(&candle(&x).unwrap()),
                2e-6,
            );
        }
    }
}

#[test]
fn gelu_in_half_precision_rounds_the_f32_result() {
    let mut rng = StdRng::seed_from_u64(2);
    let x = tensor(random(&mut rng, 2 * 4304, 6.0), &[2, 4304]);
    for (dtype, ulp) in HALF_DTYPES {
        let (half, wide) = (to(&x, dtype), rounded(&x, dtype));
        for (what, ours, candle) in FORMS {
            let want = to(&candle(&wide).unwrap(), dtype);
            assert_close(
                what,
                &values(&gelu(&half, ours).unwrap()),
                &values(&want),
                ulp,
            );
        }
    }
}

#[test]
fn gelu_simd_paths_match_scalar() {
    let mut rng = StdRng::seed_from_u64(3);
    for n in GELU_LENGTHS {
        let x = random(&mut rng, n, 12.0);
        for form in [Gelu::Tanh, Gelu::Erf] {
            assert_paths_match_scalar(&format!("{form:?}"), &simd::PATHS, 1e-6, |isa| {
                let mut y = vec![0f32; n];
                gelu_slice(isa, form, &x, &mut y);
                y
            });
        }
    }
}
