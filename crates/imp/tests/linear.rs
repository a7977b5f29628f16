//! `Linear` runs 4-bit weights (Q4_0, Q4_K) through the imp-kernels matrix products on padded,
//! batched inputs of any float dtype, and agrees with candle's `QMatMul`.

use candle_core::quantized::{GgmlDType, QMatMul};
use candle_core::{DType, Device, Module, Tensor};
use imp::nn::Linear;
use imp::quant::Matrix;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const FORMATS: [GgmlDType; 2] = [GgmlDType::Q4_0, GgmlDType::Q4K];

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

#[test]
fn linear_runs_4_bit_weights_like_candle() {
    let device = Device::Cpu;
    let mut rng = StdRng::seed_from_u64(11);
    // 300 columns are stored as 512: `Linear` pads the input to match.
    let (out, width) = (37, 300);
    let w = Tensor::from_vec(random(&mut rng, out, width, 0), (out, width), &device).unwrap();
    let bias = Tensor::from_vec(random(&mut rng, 1, out, 0), out, &device).unwrap();
    let x = Tensor::from_vec(random(&mut rng, 10, width, 0), (2, 5, width), &device).unwrap();
    for format in FORMATS {
        let Matrix::Blocks(blocks) = Matrix::convert(&w, format).unwrap() else {
            panic!("{format:?} is a block format");
        };
        let padding = blocks.shape().dims2().unwrap().1 - width;
        let candle = QMatMul::from_qtensor(blocks).unwrap();
        let want = candle
            .forward(&x.pad_with_zeros(2, 0, padding).unwrap())
            .unwrap()
            .broadcast_add(&bias)
            .unwrap();
        // bf16 inputs and outputs carry 8 significant bits; Q4_K activations are quantized
        // per 32 (ours) or 256 values (candle's).
        for (dtype, tolerance) in [(DType::F32, 2e-2), (DType::BF16, 5e-2)] {
            // The bias comes in the compute dtype, as the models load it.
            let linear = Linear::from_matrix(
                Matrix::convert(&w, format).unwrap(),
                width,
                Some(bias.to_dtype(dtype).unwrap()),
            )
            .unwrap();
            let got = linear.forward(&x.to_dtype(dtype).unwrap()).unwrap();
            assert_eq!(got.dtype(), dtype);
            assert_eq!(got.dims(), &[2, 5, out]);
            let got = got.to_dtype(DType::F32).unwrap();
            let (diff, scale) = (max_abs(&(got - &want).unwrap()), max_abs(&want));
            assert!(
                diff <= tolerance * scale,
                "{format:?} {dtype:?}: {diff} of {scale}"
            );
        }
    }
}

fn max_abs(t: &Tensor) -> f32 {
    let max = t.abs().unwrap().max_all().unwrap();
    max.to_scalar::<f32>().unwrap()
}
