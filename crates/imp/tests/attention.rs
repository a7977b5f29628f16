//! Attention: the rotary layout the fused kernel needs, and the fused and candle paths of
//! `attend` agreeing.
//!
//! Partial rotary embeddings (Phi-2 rotates 32 of 80 head dims) must come out in a layout the
//! fused attention takes, or decoding silently falls back to candle's slower attention.

use candle_core::{DType, Device, Tensor, D};
use imp::nn::attention::{attend, attend_candle, Rotary};
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

/// The seam's two paths agree: the fused kernel that `attend` takes on the CPU, and candle's
/// ops that other devices and training take, for causal (a KV cache with a past) and full
/// attention with grouped key/value heads.
#[test]
fn fused_and_candle_attention_agree() -> Result<(), Box<dyn std::error::Error>> {
    let device = Device::Cpu;
    let (heads, kv_heads, head_dim) = (8, 2, 64);
    for (new, past) in [(1, 37), (9, 20), (16, 0)] {
        let keys = past + new;
        let q = Tensor::randn(0f32, 1.0, (1, heads, new, head_dim), &device)?;
        let k = Tensor::randn(0f32, 1.0, (1, kv_heads, keys, head_dim), &device)?;
        let v = Tensor::randn(0f32, 1.0, (1, kv_heads, keys, head_dim), &device)?;
        for causal_past in [Some(past), None] {
            let fused = attend(&q, &k, &v, causal_past)?;
            let reference = attend_candle(&q, &k, &v, causal_past)?;
            let diff = (fused - reference)?.abs()?.flatten_all()?.max(0)?;
            let diff = diff.to_scalar::<f32>()?;
            assert!(
                diff < 1e-5,
                "{new} new, {past} past, {causal_past:?}: {diff}"
            );
        }
    }
    Ok(())
}
