//! The aarch64 Q4_0 kernel, NEON with the `dotprod` extension, and the helpers the Q4_K one
//! shares. A 16-byte quarter of a packed block row holds 4 bytes of each of 4 lanes; the
//! nibbles minus 8 are signed, and one lane-indexed `sdot` multiplies them with 4 activation
//! bytes, so no correction term is needed. (The `vdotq_laneq_s32` intrinsic is not stable Rust
//! yet, hence the one-instruction `asm!`.)

use std::arch::aarch64::*;
use std::arch::asm;
use std::array;

use super::act::Rows;
use super::q4_0::{Tile, BLOCK_BYTES};
use super::{Isa, BLOCK, LANES, MAX_ROWS};

pub(super) fn dotprod(tile: Tile<'_>, rows: Rows<'_>, out: &mut [[f32; LANES]]) {
    assert!(Isa::NeonDotprod.is_available());
    tile.check(rows.blocks());
    assert_eq!(out.len(), rows.len());
    assert!((1..=MAX_ROWS).contains(&out.len()));
    // At most 4 rows at once: 3 registers per row, and the weights and partial sums.
    for (first, out) in (0..rows.len()).step_by(4).zip(out.chunks_mut(4)) {
        let rows = rows.slice(first, out.len());
        // Safety: the CPU has `dotprod` and the lengths are right (asserted above).
        unsafe {
            match out.len() {
                1 => dot::<1>(tile, rows, out),
                2 => dot::<2>(tile, rows, out),
                3 => dot::<3>(tile, rows, out),
                _ => dot::<4>(tile, rows, out),
            }
        }
    }
}

/// `acc[i] += Σ_k w[4i + k] · x[4L + k]`.
///
/// Safety: the CPU has `dotprod`.
#[inline(always)]
pub(super) unsafe fn sdot<const L: i32>(acc: int32x4_t, w: int8x16_t, x: int8x16_t) -> int32x4_t {
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
pub(super) unsafe fn f16x4_to_f32(p: *const u16) -> float32x4_t {
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

/// One tile against `R` rows (`R == out.len()`), 4 lanes per register, the quarters in turn.
///
/// Safety: the CPU has `dotprod`; the lengths were checked by `dotprod`.
#[target_feature(enable = "neon,dotprod")]
unsafe fn dot<const R: usize>(tile: Tile<'_>, rows: Rows<'_>, out: &mut [[f32; LANES]]) {
    let mask = vdupq_n_u8(0x0F);
    let eight = vdupq_n_s8(8);
    let x: [*const i8; R] = array::from_fn(|r| rows.qs(r).as_ptr());
    let (scales, quants) = (tile.scales.as_ptr().cast::<u16>(), tile.quants.as_ptr());
    for quarter in 0..4 {
        let mut acc = [vdupq_n_f32(0.0); R];
        for b in 0..rows.blocks() {
            let xl: [int8x16_t; R] = array::from_fn(|r| vld1q_s8(x[r].add(b * BLOCK)));
            let xh: [int8x16_t; R] = array::from_fn(|r| vld1q_s8(x[r].add(b * BLOCK + 16)));
            let q = quants.add(b * BLOCK_BYTES + quarter * 16);
            let nibbles = |j: usize| {
                let v = vld1q_u8(q.add(j * 64));
                let lo = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(v, mask)), eight);
                let hi = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8::<4>(v)), eight);
                (lo, hi)
            };
            let (l0, h0) = nibbles(0);
            let (l1, h1) = nibbles(1);
            let (l2, h2) = nibbles(2);
            let (l3, h3) = nibbles(3);
            let dw = f16x4_to_f32(scales.add(b * LANES + quarter * 4));
            for r in 0..R {
                // Two chains, low and high nibbles, for instruction-level parallelism.
                let mut lo = sdot::<0>(vdupq_n_s32(0), l0, xl[r]);
                let mut hi = sdot::<0>(vdupq_n_s32(0), h0, xh[r]);
                lo = sdot::<1>(lo, l1, xl[r]);
                hi = sdot::<1>(hi, h1, xh[r]);
                lo = sdot::<2>(lo, l2, xl[r]);
                hi = sdot::<2>(hi, h2, xh[r]);
                lo = sdot::<3>(lo, l3, xl[r]);
                hi = sdot::<3>(hi, h3, xh[r]);
                let dot = vcvtq_f32_s32(vaddq_s32(lo, hi));
                let s = vmulq_n_f32(dw, rows.d(r)[b]);
                acc[r] = vfmaq_f32(acc[r], s, dot);
            }
        }
        for r in 0..R {
            vst1q_f32(out[r].as_mut_ptr().add(quarter * 4), acc[r]);
        }
    }
}
