//! The aarch64 Q8_0 kernel, NEON with the `dotprod` extension. A 16-byte quarter of a packed
//! block row holds 4 bytes of each of 4 lanes; weights and activations are both signed, so one
//! lane-indexed `sdot` multiplies them with 4 activation bytes, no correction needed.

use std::arch::aarch64::*;
use std::array;

use super::{Tile, BLOCK_BYTES, Q8_0};
use crate::act::{Rows, BLOCK};
use crate::cpu::Isa;
use crate::packed::neon::{f16x4_to_f32, sdot};
use crate::packed::{check_call, in_groups, LANES};

pub(super) fn dotprod(tile: Tile<'_>, rows: Rows<'_>, out: &mut [[f32; LANES]]) {
    check_call::<Q8_0>(Isa::NeonDotprod, &tile, &rows, out);
    // At most 4 rows at once: 3 registers per row, and the 8 weight registers.
    in_groups(rows, out, 4, |rows, out| {
        // Safety: `check_call` made sure of the CPU features and the lengths.
        unsafe {
            match out.len() {
                1 => dot::<1>(tile, rows, out),
                2 => dot::<2>(tile, rows, out),
                3 => dot::<3>(tile, rows, out),
                _ => dot::<4>(tile, rows, out),
            }
        }
    });
}

/// One tile against `R` rows (`R == out.len()`), 4 lanes per register, the quarters in turn.
///
/// Safety: the CPU has `dotprod`; the lengths passed `check_call`.
#[target_feature(enable = "neon,dotprod")]
unsafe fn dot<const R: usize>(tile: Tile<'_>, rows: Rows<'_>, out: &mut [[f32; LANES]]) {
    let x: [*const i8; R] = array::from_fn(|r| rows.qs(r).as_ptr());
    let (scales, quants) = (
        tile.scales.as_ptr().cast::<u16>(),
        tile.quants.as_ptr().cast::<i8>(),
    );
    for quarter in 0..4 {
        let mut acc = [vdupq_n_f32(0.0); R];
        for b in 0..rows.blocks() {
            let xl: [int8x16_t; R] = array::from_fn(|r| vld1q_s8(x[r].add(b * BLOCK)));
            let xh: [int8x16_t; R] = array::from_fn(|r| vld1q_s8(x[r].add(b * BLOCK + 16)));
            let q = quants.add(b * BLOCK_BYTES + quarter * 16);
            let w: [int8x16_t; 8] = array::from_fn(|j| vld1q_s8(q.add(j * 64)));
            let dw = f16x4_to_f32(scales.add(b * LANES + quarter * 4));
            for r in 0..R {
                // Two chains, the first and the second 16 values, for instruction-level
                // parallelism.
                let mut lo = sdot::<0>(vdupq_n_s32(0), w[0], xl[r]);
                let mut hi = sdot::<0>(vdupq_n_s32(0), w[4], xh[r]);
                lo = sdot::<1>(lo, w[1], xl[r]);
                hi = sdot::<1>(hi, w[5], xh[r]);
                lo = sdot::<2>(lo, w[2], xl[r]);
                hi = sdot::<2>(hi, w[6], xh[r]);
                lo = sdot::<3>(lo, w[3], xl[r]);
                hi = sdot::<3>(hi, w[7], xh[r]);
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
