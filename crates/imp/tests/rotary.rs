//! Partial rotary embeddings (Phi-2 rotates 32 of 80 head dims) must come out in a layout the
//! fused attention takes, or decoding silently falls back to candle's slower attention.

use candle_core::{DType, Device, Tensor, D};
use imp::nn::attention::Rotary;
use imp_kernels::flash;

#[test]
fn partial_rotary_is_fused_attention_ready_and_correct() -> Result<(), Box<dyn std::error::Error>> {
    let device = Device::Cpu;
    let (heads, tokens, head_dim, rotary_dim, start) = (4, 3, 80, 32, 5);
    let rotary = Rotary::new(rotary_dim, 10_000.0, 16, DType::F32, &device)?;
    let x = Tensor::randn(0f32, 1.0, (1, heads, tokens, head_dim), &device)?;
    let out = rotary.apply(&x, start)?;
    assert!(flash::supports(&out), "strides {:?}", out.stride());

    // Reference: rotate the leading dims alone (the full-rotary path), pass the rest through.
    let full = Rotary::new(rotary_dim, 10_000.0, 16, DType::F32, &device)?;
    let rotated = full.apply(&x.narrow(D::Minus1, 0, rotary_dim)?.contiguous()?, start)?;
    let pass = x.narrow(D::Minus1, rotary_dim, head_dim - rotary_dim)?;
    let expected = Tensor::cat(&[rotated, pass], D::Minus1)?;
    let diff = (out - expected)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()?;
    assert!(diff < 1e-6, "max difference {diff}");
    Ok(())
}
