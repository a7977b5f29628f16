//! Our block-format kernels (Q4_0, Q4_K, Q8_0): every SIMD path this CPU runs gives the scalar
//! reference's numbers up to float summation order (the integer dot products are exact); the
//! reference gives the product of candle's dequantized GGML weights with the int8-quantized
//! activations; and the results agree with candle's `QMatMul` on the same GGML bytes up to the
//! two activation quantizations.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use imp_kernels::{packed, Isa, PackedQ4K, PackedQ4_0, PackedQ8_0};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::support::simd_paths;

/// Activation rows: decode, a few, two row groups of a kernel (4 + 2), more than one kernel
/// call, a full row chunk.
const ROWS: [usize; 5] = [1, 3, 6, 17, 64];

/// `(out, in, zero-padded columns at the end of in)`; the odd `out` leave part of the last
/// 16-row tile empty. Q4_K takes the widths that are whole super-blocks of 256.
const SHAPES: [(usize, usize, usize); 6] = [
    (1, 32, 0),
    (33, 256, 0),
    (17, 1280, 128),
    (45, 2560, 0),
    (7, 10240, 0),
    (64, 2560, 0),
];

const FORMATS: [GgmlDType; 3] = [GgmlDType::Q4_0, GgmlDType::Q4K, GgmlDType::Q8_0];

/// A random matrix `[rows, cols]` with its last `padding` columns zero; a few large values give
/// the blocks different scales.
fn random(rng: &mut StdRng, rows: usize, cols: usize, padding: usize) -> Vec<f32> {
    let mut values = vec![0f32; rows * cols];
    for row in values.chunks_mut(cols) {
        for v in &mut row[..cols - padding] {
            *v = rng.random_range(-1.0..1.0) * if rng.random_bool(0.05) { 8.0 } else { 1.0 };
        }
    }
    values
}

/// `x` as the kernels see it: per `group` values (32, or 256 for Q4_K) `d = max|x| / 127` and
/// `round(x / d) · d` (ties to even), in the same f32 operations.
fn quantized_activations(x: &[f32], group: usize) -> Vec<f32> {
    x.chunks(group)
        .flat_map(|block| {
            let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d > 0.0 { 1.0 / d } else { 0.0 };
            block.iter().map(move |v| (v * id).round_ties_even() * d)
        })
        .collect()
}

enum Packed {
    Q4_0(PackedQ4_0),
    Q4K(PackedQ4K),
    Q8_0(PackedQ8_0),
}

struct Case {
    format: GgmlDType,
    m: usize,
    out: usize,
    width: usize,
    x: Vec<f32>,
    candle: QMatMul,
    packed: Packed,
    /// Dequantized weights times quantized activations, summed in f64.
    exact: Vec<f32>,
    /// `Σ_k |w[o, k] · x[r, k]|` per output: the scale of the rounding errors of any
    /// summation order.
    magnitude: Vec<f32>,
    /// `Σ_k |w[o, k]| · max |x[r, 256-block of k]| / 127` per output: a bound on the
    /// difference that quantizing the activations per 32 (ours for Q4_0 and Q8_0) or per 256
    /// values (ours for Q4_K, candle's q8_k) makes.
    act_error: Vec<f32>,
}

impl Case {
    fn new(rng: &mut StdRng, format: GgmlDType, m: usize, shape: (usize, usize, usize)) -> Self {
        let (out, width, padding) = shape;
        let device = Device::Cpu;
        let w = Tensor::from_vec(random(rng, out, width, padding), (out, width), &device).unwrap();
        let blocks = QTensor::quantize(&w, format).unwrap();
        let data = blocks.data().unwrap();
        let packed = match format {
            GgmlDType::Q4_0 => Packed::Q4_0(PackedQ4_0::from_ggml(&data, out, width).unwrap()),
            GgmlDType::Q8_0 => Packed::Q8_0(PackedQ8_0::from_ggml(&data, out, width).unwrap()),
            _ => Packed::Q4K(PackedQ4K::from_ggml(&data, out, width).unwrap()),
        };
        let w = blocks.dequantize(&device).unwrap();
        let w = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let x = random(rng, m, width, padding);
        let group = match format {
            GgmlDType::Q4K => 256,
            _ => 32,
        };
        let xq = quantized_activations(&x, group);
        let mut exact = vec![0f32; m * out];
        let mut magnitude = vec![0f32; m * out];
        let mut act_error = vec![0f32; m * out];
        for r in 0..m {
            let (x, xq) = (
                &x[r * width..(r + 1) * width],
                &xq[r * width..(r + 1) * width],
            );
            let amax: Vec<f32> = x
                .chunks(256)
                .map(|c| c.iter().fold(0f32, |a, v| a.max(v.abs())))
                .collect();
            for o in 0..out {
                let w = &w[o * width..(o + 1) * width];
                let i = r * out + o;
                exact[i] = w
                    .iter()
                    .zip(xq)
                    .map(|(&a, &b)| a as f64 * b as f64)
                    .sum::<f64>() as f32;
                magnitude[i] = w.iter().zip(x).map(|(a, b)| (a * b).abs()).sum();
                act_error[i] = w
                    .iter()
                    .enumerate()
                    .map(|(k, a)| a.abs() * amax[k / 256])
                    .sum();
                act_error[i] /= 127.0;
            }
        }
        Self {
            format,
            m,
            out,
            width,
            x,
            candle: QMatMul::from_qtensor(blocks).unwrap(),
            packed,
            exact,
            magnitude,
            act_error,
        }
    }

    fn run(&self, isa: Isa) -> Vec<f32> {
        let mut y = vec![f32::NAN; self.m * self.out];
        match &self.packed {
            Packed::Q4_0(p) => p.matmul_with(isa, &self.x, &mut y).unwrap(),
            Packed::Q4K(p) => p.matmul_with(isa, &self.x, &mut y).unwrap(),
            Packed::Q8_0(p) => p.matmul_with(isa, &self.x, &mut y).unwrap(),
        }
        y
    }

    /// Asserts `|got - want| <= tolerance(output)` for every output.
    fn assert_close(
        &self,
        got: &[f32],
        want: &[f32],
        tolerance: impl Fn(usize) -> f32,
        what: &str,
    ) {
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= tolerance(i),
                "{:?} {what}, m {} [{}, {}]: output {i} is {g}, expected {w} (magnitude {})",
                self.format,
                self.m,
                self.out,
                self.width,
                self.magnitude[i]
            );
        }
    }

    /// A bound for float rounding in any order: one rounding per block and output.
    fn rounding(&self, i: usize) -> f32 {
        4.0 * (self.width / 32) as f32 * f32::EPSILON * self.magnitude[i]
    }
}

fn cases() -> impl Iterator<Item = Case> {
    let mut rng = StdRng::seed_from_u64(7);
    FORMATS
        .into_iter()
        .flat_map(|format| ROWS.map(|m| (format, m)))
        .flat_map(|(format, m)| SHAPES.map(|shape| (format, m, shape)))
        .filter(|&(format, _, (_, width, _))| format != GgmlDType::Q4K || width % 256 == 0)
        .map(move |(format, m, shape)| Case::new(&mut rng, format, m, shape))
}

#[test]
fn every_simd_path_equals_the_scalar_reference() {
    let isas = simd_paths(&packed::PATHS);
    eprintln!("Block-format paths on this CPU besides the scalar one: {isas:?}");
    for case in cases() {
        let reference = case.run(Isa::Scalar);
        for &isa in &isas {
            let what = format!("{isa:?}");
            case.assert_close(&case.run(isa), &reference, |i| case.rounding(i), &what);
        }
    }
}

#[test]
fn reference_is_the_ggml_weights_times_the_quantized_activations() {
    for case in cases() {
        let got = case.run(Isa::Scalar);
        case.assert_close(&got, &case.exact, |i| case.rounding(i), "exact");
    }
}

#[test]
fn kernels_agree_with_candle_qmatmul() {
    for case in cases() {
        let x = Tensor::from_vec(case.x.clone(), (case.m, case.width), &Device::Cpu).unwrap();
        let candle = case.candle.forward(&x).unwrap();
        let candle = candle.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // For Q4_0 candle quantizes the activations as we do, only with f16 scales (relative
        // error 2^-11); for Q4_K it takes one scale per 256 values as we do, but rounds its own
        // way (q8_K), and so it does for Q8_0 where it repacks the weights (x86 with AVX-512
        // VNNI or AVX-VNNI, rows a multiple of 16).
        let tolerance = |i: usize| match case.format {
            GgmlDType::Q4_0 => 1e-3 * case.magnitude[i],
            _ => case.act_error[i] + 1e-3 * case.magnitude[i],
        };
        let best = Isa::best_of(&packed::PATHS);
        case.assert_close(&case.run(best), &candle, tolerance, "vs candle");
    }
}

#[test]
fn bad_shapes_are_errors() {
    let bytes = vec![0u8; 18 * 2];
    assert!(PackedQ4_0::from_ggml(&bytes, 1, 48).is_err());
    assert!(PackedQ4_0::from_ggml(&bytes, 3, 32).is_err());
    let packed = PackedQ4_0::from_ggml(&bytes, 2, 32).unwrap();
    assert!(packed.matmul(&[0.0; 33], &mut [0.0; 2]).is_err());
    assert!(packed.matmul(&[0.0; 32], &mut [0.0; 3]).is_err());
    let bytes = vec![0u8; 144];
    assert!(PackedQ4K::from_ggml(&bytes, 1, 128).is_err());
    assert!(PackedQ4K::from_ggml(&bytes, 2, 256).is_err());
    assert!(PackedQ4K::from_ggml(&bytes, 1, 256).is_ok());
    let bytes = vec![0u8; 34 * 2];
    assert!(PackedQ8_0::from_ggml(&bytes, 1, 48).is_err());
    assert!(PackedQ8_0::from_ggml(&bytes, 3, 32).is_err());
    assert!(PackedQ8_0::from_ggml(&bytes, 1, 64).is_ok());
}
