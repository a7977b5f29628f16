//! What the aarch64 kernels of both formats share. (The `vdotq_laneq_s32` intrinsic is not
//! stable Rust yet, hence the one-instruction `asm!`.)

use std::arch::aarch64::*;
use std::arch::asm;

/// `acc[i] += Σ_k w[4i + k] · x[4L + k]`.
///
/// Safety: the CPU has `dotprod`.
#[inline(always)]
pub unsafe fn sdot<const L: i32>(acc: int32x4_t, w: int8x16_t, x: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    asm!(
        "sdot {acc:v}.4s, {w:v}.16b, {x:v}.4b[{l}]",
        acc = inout(vreg) acc,
        w = in(vreg) w,
        x = in(vreg) x,
        l = const L,
        options(pure, nomem, nostack),
    );
    acc
}

/// Four f16 scales to f32, exactly, with integer operations only (f16 vector types are not
/// stable Rust yet): shifting the exponent and mantissa into place and multiplying by 2^112
/// rebases the exponent and handles subnormals; infinities and NaNs get the all-ones exponent.
///
/// Safety: `p` points to 4 readable f16 values.
#[inline(always)]
pub unsafe fn f16x4_to_f32(p: *const u16) -> float32x4_t {
    let h = vmovl_u16(vld1_u16(p));
    let sign = vshlq_n_u32::<16>(vandq_u32(h, vdupq_n_u32(0x8000)));
    let bits = vshlq_n_u32::<13>(vandq_u32(h, vdupq_n_u32(0x7FFF)));
    let finite = vmulq_f32(
        vreinterpretq_f32_u32(bits),
        vdupq_n_f32(f32::from_bits(0x7780_0000)),
    );
    let special = vceqq_u32(vandq_u32(h, vdupq_n_u32(0x7C00)), vdupq_n_u32(0x7C00));
    let inf_nan = vorrq_u32(bits, vdupq_n_u32(0x7F80_0000));
    let magnitude = vbslq_u32(special, inf_nan, vreinterpretq_u32_f32(finite));
    vreinterpretq_f32_u32(vorrq_u32(magnitude, sign))
}
