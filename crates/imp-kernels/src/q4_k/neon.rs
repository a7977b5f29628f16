//! The aarch64 Q4_K kernel, NEON with `dotprod`: the scheme of `q4_0/neon.rs` on the Q4_K
//! layout.
//! The nibbles (0..15) are valid signed bytes as they are, so `sdot` takes them directly and
//! the minimum term `dmin · m · d_x · Σx` is subtracted in f32. The activations have one scale
//! per super-block.

use std::arch::aarch64::*;
use std::array;

use super::{Tile, Q4K, QUANT_BYTES, SM_BYTES, SUBS};
use crate::act::{Rows, BLOCK};
use crate::cpu::Isa;
use crate::packed::neon::{f16x4_to_f32, sdot};
use crate::packed::{check_call, in_groups, LANES};

pub(super) fn dotprod(tile: Tile<'_>, rows: Rows<'_>, out: &mut [[f32; LANES]]) {
    check_call::<Q4K>(Isa::NeonDotprod, &tile, &rows, out);
    // At most 2 rows at once: the 16 weight registers of a chunk take half the register file.
    in_groups(rows, out, 2, |rows, out| {
        // Safety: `check_call` made sure of the CPU features and the lengths.
        unsafe {
            match out.len() {
                1 => dot::<1>(tile, rows, out),
                _ => dot::<2>(tile, rows, out),
            }
        }
    });
}

/// Four sub-block scales or minimums (bytes) as f32.
///
/// Safety: `p` points to 4 readable bytes.
#[inline(always)]
unsafe fn u8x4_to_f32(p: *const u8) -> float32x4_t {
    let bytes = vcreate_u8(u64::from(p.cast::<u32>().read_unaligned()));
    vcvtq_f32_u32(vmovl_u16(vget_low_u16(vmovl_u8(bytes))))
}

/// One tile against `R` rows (`R == out.len()`), 4 lanes per register, the quarters in turn.
///
/// Safety: the CPU has `dotprod`; the lengths passed `check_call`.
#[target_feature(enable = "neon,dotprod")]
unsafe fn dot<const R: usize>(tile: Tile<'_>, rows: Rows<'_>, out: &mut [[f32; LANES]]) {
    let mask = vdupq_n_u8(0x0F);
    let x: [*const i8; R] = array::from_fn(|r| rows.qs(r).as_ptr());
    let d: [*const f32; R] = array::from_fn(|r| rows.d(r).as_ptr());
    let sums: [&[i16]; R] = array::from_fn(|r| rows.sums(r));
    for quarter in 0..4 {
        let mut acc = [vdupq_n_f32(0.0); R];
        for sb in 0..rows.blocks() / SUBS {
            let dd = tile
                .dd
                .as_ptr()
                .cast::<u16>()
                .add(sb * 2 * LANES + quarter * 4);
            let (d_w, dmin) = (f16x4_to_f32(dd), f16x4_to_f32(dd.add(LANES)));
            let sm = tile.sm.as_ptr().add(sb * SM_BYTES + quarter * 4);
            let q = tile.quants.as_ptr().add(sb * QUANT_BYTES + quarter * 16);
            for p in 0..SUBS / 2 {
                let b = sb * SUBS + 2 * p;
                let w: [uint8x16_t; 8] = array::from_fn(|g| vld1q_u8(q.add((p * 8 + g) * 64)));
                let wl: [int8x16_t; 8] = w.map(|v| vreinterpretq_s8_u8(vandq_u8(v, mask)));
                let wh: [int8x16_t; 8] = w.map(|v| vreinterpretq_s8_u8(vshrq_n_u8::<4>(v)));
                for r in 0..R {
                    let xl = x[r].add(b * BLOCK);
                    let xh = x[r].add((b + 1) * BLOCK);
                    let (xl0, xl1) = (vld1q_s8(xl), vld1q_s8(xl.add(16)));
                    let (xh0, xh1) = (vld1q_s8(xh), vld1q_s8(xh.add(16)));
                    let mut lo = sdot::<0>(vdupq_n_s32(0), wl[0], xl0);
                    let mut hi = sdot::<0>(vdupq_n_s32(0), wh[0], xh0);
                    lo = sdot::<1>(lo, wl[1], xl0);
                    hi = sdot::<1>(hi, wh[1], xh0);
                    lo = sdot::<2>(lo, wl[2], xl0);
                    hi = sdot::<2>(hi, wh[2], xh0);
                    lo = sdot::<3>(lo, wl[3], xl0);
                    hi = sdot::<3>(hi, wh[3], xh0);
                    lo = sdot::<0>(lo, wl[4], xl1);
                    hi = sdot::<0>(hi, wh[4], xh1);
                    lo = sdot::<1>(lo, wl[5], xl1);
                    hi = sdot::<1>(hi, wh[5], xh1);
                    lo = sdot::<2>(lo, wl[6], xl1);
                    hi = sdot::<2>(hi, wh[6], xh1);
                    lo = sdot::<3>(lo, wl[7], xl1);
                    hi = sdot::<3>(hi, wh[7], xh1);
                    for (h, dot) in [lo, hi].into_iter().enumerate() {
                        let s = 2 * p + h;
                        let dsc = vmulq_f32(d_w, u8x4_to_f32(sm.add(s * LANES)));
                        let dmm = vmulq_f32(dmin, u8x4_to_f32(sm.add((SUBS + s) * LANES)));
                        let dx = *d[r].add(sb);
                        let x_sum = dx * f32::from(sums[r][b + h]);
                        acc[r] = vfmaq_f32(acc[r], vmulq_n_f32(dsc, dx), vcvtq_f32_s32(dot));
                        acc[r] = vfmsq_f32(acc[r], dmm, vdupq_n_f32(x_sum));
                    }
                }
            }
        }
        for r in 0..R {
            vst1q_f32(out[r].as_mut_ptr().add(quarter * 4), acc[r]);
        }
    }
}
