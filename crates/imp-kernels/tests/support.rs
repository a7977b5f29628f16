//! What the kernel tests share: random inputs, tensor conversions, tolerances, and the check of a
//! kernel family's SIMD paths against its scalar one.

use candle_core::{DType, Device, Tensor};
use imp_kernels::Isa;
use rand::rngs::StdRng;
use rand::Rng;

/// `n` values uniform in `-amplitude..amplitude`.
pub fn random(rng: &mut StdRng, n: usize, amplitude: f32) -> Vec<f32> {
    (0..n)
        .map(|_| rng.random_range(-amplitude..amplitude))
        .collect()
}

pub fn tensor(values: Vec<f32>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

pub fn values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Largest `|a - b| / (1 + |b|)`: absolute near zero, relative for large values.
pub fn max_error(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / (1.0 + y.abs()))
        .fold(0.0, f32::max)
}

pub fn assert_close(what: &str, got: &[f32], want: &[f32], tolerance: f32) {
    let error = max_error(got, want);
    assert!(
        error <= tolerance,
        "{what}: error {error:e} above {tolerance:e}"
    );
}

/// The half-precision dtypes with the error of one rounding of an f32 result to them: half an
/// ulp of the format, relative.
pub const HALF_DTYPES: [(DType, f32); 2] = [(DType::F16, 1e-3), (DType::BF16, 8e-3)];

/// `t` rounded to `dtype`.
pub fn to(t: &Tensor, dtype: DType) -> Tensor {
    t.to_dtype(dtype).unwrap()
}

/// `t` rounded to `dtype` and widened back to f32.
pub fn rounded(t: &Tensor, dtype: DType) -> Tensor {
    to(t, dtype).to_dtype(DType::F32).unwrap()
}

/// The paths of a kernel family (`paths`, such as `simd::PATHS`) other than the scalar one that
/// this CPU runs: the ones to check against [`Isa::Scalar`].
pub fn simd_paths(paths: &[Isa]) -> Vec<Isa> {
    Isa::available_of(paths)
        .into_iter()
        .filter(|&isa| isa != Isa::Scalar)
        .collect()
}

/// Asserts that `run` on every SIMD path of a kernel family gives its scalar path's values up to
/// `tolerance` (see [`max_error`]).
pub fn assert_paths_match_scalar(
    what: &str,
    paths: &[Isa],
    tolerance: f32,
    run: impl Fn(Isa) -> Vec<f32>,
) {
    let want = run(Isa::Scalar);
    for isa in simd_paths(paths) {
        assert_close(&format!("{what} {isa:?}"), &run(isa), &want, tolerance);
    }
}
