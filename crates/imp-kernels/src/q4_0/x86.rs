//! x86-64 Q4_0 kernels. A 64-byte row of a packed block holds 4 bytes (8 nibbles) of each of
//! the 16 lanes, so one AVX-512 register of masked nibbles times 4 broadcast activation bytes
//! gives all 16 lanes' partial dot products in one `vpdpbusd`; AVX2 does the same per 8 lanes
//! with `vpmaddubsw` (products of at most 15 · 127, so its i16 sums never saturate). The
//! nibbles are multiplied unsigned and `-8 · Σx` corrects the sum.

use std::arch::x86_64::*;
use std::array;

use super::{Tile, BLOCK_BYTES, Q4_0};
use crate::act::{Rows, BLOCK};
use crate::cpu::Isa;
use crate::packed::x86::{quad, row_pointers, with_row_count, PREFETCH_BYTES};
use crate::packed::{check_call, in_groups, LANES};

pub(super) fn avx512_vnni(tile: Tile<'_>, rows: Rows<'_>, out: &mut [[f32; LANES]]) {
    check_call::<Q4_0>(Isa::Avx512Vnni, &tile, &rows, out);
    // Safety: `check_call` made sure of the CPU features and the lengths.
    unsafe { with_row_count!(out.len(), vnni(tile, rows, out)) }
}

pub(super) fn avx2(tile: Tile<'_>, rows: Rows<'_>, out: &mut [[f32; LANES]]) {
    check_call::<Q4_0>(Isa::Avx2, &tile, &rows, out);
    // At most 4 rows at once: 2 registers per row fill the 16 of AVX2. One row (decode) is
    // bound by memory, more by the multiply-adds.
    in_groups(rows, out, 4, |rows, out| {
        // Safety: `check_call` made sure of the CPU features and the lengths.
        unsafe {
            match out.len() {
                1 => avx2_one_pass::<1>(tile, rows, out),
                2 => avx2_rows::<2>(tile, rows, out),
                3 => avx2_rows::<3>(tile, rows, out),
                _ => avx2_rows::<4>(tile, rows, out),
            }
        }
    });
}

/// One tile against `R` rows (`R == out.len()`), all 16 lanes per register.
///
/// Safety: the CPU has AVX-512 F, BW and VNNI; the lengths passed `check_call`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn vnni<const R: usize>(tile: Tile<'_>, rows: Rows<'_>, out: &mut [[f32; LANES]]) {
    let mask = _mm512_set1_epi8(0x0F);
    let x: [*const i8; R] = row_pointers(|r| rows.qs(r));
    let d: [*const f32; R] = row_pointers(|r| rows.d(r));
    let sums: [*const i16; R] = row_pointers(|r| rows.sums(r));
    let (scales, quants) = (tile.scales.as_ptr(), tile.quants.as_ptr());
    let mut acc = [_mm512_setzero_ps(); R];
    for b in 0..rows.blocks() {
        // A single row gets two dependency chains (low and high nibbles) to keep the pipes
        // busy; several rows are independent chains already.
        let mut lo: [__m512i; R] =
            array::from_fn(|r| _mm512_set1_epi32(-8 * i32::from(*sums[r].add(b))));
        let mut hi = [_mm512_setzero_si512(); R];
        let q = quants.add(b * BLOCK_BYTES);
        for j in 0..4 {
            let line = q.add(j * 64);
            // Past the tile's end this asks for the next tile's lines, which the same thread
            // reads next; a prefetch never faults.
            _mm_prefetch::<_MM_HINT_T0>(line.wrapping_add(PREFETCH_BYTES).cast());
            let v = _mm512_loadu_si512(line.cast());
            let wl = _mm512_and_si512(v, mask);
            let wh = _mm512_and_si512(_mm512_srli_epi16::<4>(v), mask);
            for r in 0..R {
                let i = b * BLOCK + 4 * j;
                let (xl, xh) = (quad(x[r], i), quad(x[r], i + 16));
                lo[r] = _mm512_dpbusd_epi32(lo[r], wl, _mm512_set1_epi32(xl));
                if R == 1 {
                    hi[r] = _mm512_dpbusd_epi32(hi[r], wh, _mm512_set1_epi32(xh));
                } else {
                    lo[r] = _mm512_dpbusd_epi32(lo[r], wh, _mm512_set1_epi32(xh));
                }
            }
        }
        let dw = _mm512_cvtph_ps(_mm256_loadu_si256(scales.add(b * LANES).cast()));
        for r in 0..R {
            let dot = _mm512_cvtepi32_ps(_mm512_add_epi32(lo[r], hi[r]));
            let s = _mm512_mul_ps(dw, _mm512_set1_ps(*d[r].add(b)));
            acc[r] = _mm512_fmadd_ps(s, dot, acc[r]);
        }
    }
    for r in 0..R {
        _mm512_storeu_ps(out[r].as_mut_ptr(), acc[r]);
    }
}

/// One tile against `R` rows (`R == out.len()`), 8 lanes per register, the two halves in turn.
///
/// Safety: the CPU has AVX2, FMA and F16C; the lengths passed `check_call`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2_rows<const R: usize>(tile: Tile<'_>, rows: Rows<'_>, out: &mut [[f32; LANES]]) {
    let mask = _mm256_set1_epi8(0x0F);
    let x: [*const i8; R] = row_pointers(|r| rows.qs(r));
    let d: [*const f32; R] = row_pointers(|r| rows.d(r));
    let sums: [*const i16; R] = row_pointers(|r| rows.sums(r));
    let (scales, quants) = (tile.scales.as_ptr(), tile.quants.as_ptr());
    for half in 0..2 {
        let mut acc = [_mm256_setzero_ps(); R];
        for b in 0..rows.blocks() {
            // Eight products of two pairs per i16 lane: at most 8 · 2 · 15 · 127 < 2^15.
            let mut sum = [_mm256_setzero_si256(); R];
            let q = quants.add(b * BLOCK_BYTES + half * 32);
            for j in 0..4 {
                let v = _mm256_loadu_si256(q.add(j * 64).cast());
                let wl = _mm256_and_si256(v, mask);
                let wh = _mm256_and_si256(_mm256_srli_epi16::<4>(v), mask);
                for r in 0..R {
                    let i = b * BLOCK + 4 * j;
                    let xl = _mm256_set1_epi32(quad(x[r], i));
                    let xh = _mm256_set1_epi32(quad(x[r], i + 16));
                    sum[r] = _mm256_add_epi16(sum[r], _mm256_maddubs_epi16(wl, xl));
                    sum[r] = _mm256_add_epi16(sum[r], _mm256_maddubs_epi16(wh, xh));
                }
            }
            let dw = _mm256_cvtph_ps(_mm_loadu_si128(scales.add(b * LANES + half * 8).cast()));
            for r in 0..R {
                acc[r] = add_block(acc[r], sum[r], dw, *d[r].add(b), i32::from(*sums[r].add(b)));
            }
        }
        for r in 0..R {
            _mm256_storeu_ps(out[r].as_mut_ptr().add(half * 8), acc[r]);
        }
    }
}

/// One tile against `R` rows (`R == out.len()`), 8 lanes per register, both halves of each
/// 64-byte row in one pass with prefetch, so each weight line is read once (see
/// `q4_k/x86.rs`).
///
/// Safety: the CPU has AVX2, FMA and F16C; the lengths passed `check_call`.
// The row and half indices address several arrays at once, which iterators would hide.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2_one_pass<const R: usize>(tile: Tile<'_>, rows: Rows<'_>, out: &mut [[f32; LANES]]) {
    let mask = _mm256_set1_epi8(0x0F);
    let x: [*const i8; R] = row_pointers(|r| rows.qs(r));
    let d: [*const f32; R] = row_pointers(|r| rows.d(r));
    let sums: [*const i16; R] = row_pointers(|r| rows.sums(r));
    let (scales, quants) = (tile.scales.as_ptr(), tile.quants.as_ptr());
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    for b in 0..rows.blocks() {
        // Eight products of two pairs per i16 lane: at most 8 · 2 · 15 · 127 < 2^15.
        let mut sum = [[_mm256_setzero_si256(); 2]; R];
        let q = quants.add(b * BLOCK_BYTES);
        for j in 0..4 {
            let line = q.add(j * 64);
            _mm_prefetch::<_MM_HINT_T0>(line.wrapping_add(PREFETCH_BYTES).cast());
            for half in 0..2 {
                let v = _mm256_loadu_si256(line.add(half * 32).cast());
                let wl = _mm256_and_si256(v, mask);
                let wh = _mm256_and_si256(_mm256_srli_epi16::<4>(v), mask);
                for r in 0..R {
                    let i = b * BLOCK + 4 * j;
                    let xl = _mm256_set1_epi32(quad(x[r], i));
                    let xh = _mm256_set1_epi32(quad(x[r], i + 16));
                    let s = &mut sum[r][half];
                    *s = _mm256_add_epi16(*s, _mm256_maddubs_epi16(wl, xl));
                    *s = _mm256_add_epi16(*s, _mm256_maddubs_epi16(wh, xh));
                }
            }
        }
        for half in 0..2 {
            let dw = _mm256_cvtph_ps(_mm_loadu_si128(scales.add(b * LANES + half * 8).cast()));
            for r in 0..R {
                acc[r][half] = add_block(
                    acc[r][half],
                    sum[r][half],
                    dw,
                    *d[r].add(b),
                    i32::from(*sums[r].add(b)),
                );
            }
        }
    }
    for r in 0..R {
        for half in 0..2 {
            _mm256_storeu_ps(out[r].as_mut_ptr().add(half * 8), acc[r][half]);
        }
    }
}

/// `acc + d_w · d_x · (Σ q·x - 8 · Σx)` for 8 lanes of one block, `sum` holding each lane's
/// `vpmaddubsw` pair sums of `q·x`: the epilogue of both AVX2 kernels.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn add_block(acc: __m256, sum: __m256i, d_w: __m256, d_x: f32, x_sum: i32) -> __m256 {
    let dot = _mm256_add_epi32(
        _mm256_madd_epi16(sum, _mm256_set1_epi16(1)),
        _mm256_set1_epi32(-8 * x_sum),
    );
    let s = _mm256_mul_ps(d_w, _mm256_set1_ps(d_x));
    _mm256_fmadd_ps(s, _mm256_cvtepi32_ps(dot), acc)
}
