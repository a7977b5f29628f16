//! x86-64 Q8_0 kernels. A 64-byte row of a packed block holds 4 bytes of each of the 16 lanes,
//! as in `q4_0/x86.rs`. `vpdpbusd` multiplies unsigned by signed bytes, so the AVX-512 kernel
//! flips each weight's sign bit (`w + 128`, unsigned) and corrects with `-128 · Σx`; AVX2's
//! `vpmaddubsw` would saturate on those sums of two products, so it multiplies `|w|` by `x`
//! carrying `w`'s sign (at most 2 · 128 · 127 per i16 lane) and widens after each product.

use std::arch::x86_64::*;
use std::array;

use super::{Tile, BLOCK_BYTES, Q8_0};
use crate::act::{Rows, BLOCK};
use crate::cpu::Isa;
use crate::packed::x86::{quad, row_pointers, with_row_count, PREFETCH_BYTES};
use crate::packed::{check_call, in_groups, LANES};

/// Groups of 4 bytes per lane in a block.
const GROUPS: usize = BLOCK / 4;

pub(super) fn avx512_vnni(tile: Tile<'_>, rows: Rows<'_>, out: &mut [[f32; LANES]]) {
    check_call::<Q8_0>(Isa::Avx512Vnni, &tile, &rows, out);
    // Safety: `check_call` made sure of the CPU features and the lengths.
    unsafe { with_row_count!(out.len(), vnni(tile, rows, out)) }
}

pub(super) fn avx2(tile: Tile<'_>, rows: Rows<'_>, out: &mut [[f32; LANES]]) {
    check_call::<Q8_0>(Isa::Avx2, &tile, &rows, out);
    // At most 4 rows at once, each weight load and `|w|` serving all of them (128 rows, AVX2-only
    // AMD EPYC, 2 threads: 19 % more multiply-adds per second than 2 rows in one pass). One row
    // (decode) is bound by memory, more by the multiply-adds.
    in_groups(rows, out, 4, |rows, out| {
        // Safety: `check_call` made sure of the CPU features and the lengths.
        unsafe {
            match out.len() {
                1 => avx2_one_pass(tile, rows, &mut out[0]),
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
    let sign_bit = _mm512_set1_epi8(i8::MIN);
    let x: [*const i8; R] = row_pointers(|r| rows.qs(r));
    let d: [*const f32; R] = row_pointers(|r| rows.d(r));
    let sums: [*const i16; R] = row_pointers(|r| rows.sums(r));
    let (scales, quants) = (tile.scales.as_ptr(), tile.quants.as_ptr());
    let mut acc = [_mm512_setzero_ps(); R];
    for b in 0..rows.blocks() {
        // A single row gets two dependency chains (even and odd groups); several rows are
        // independent chains already.
        let mut even: [__m512i; R] =
            array::from_fn(|r| _mm512_set1_epi32(-128 * i32::from(*sums[r].add(b))));
        let mut odd = [_mm512_setzero_si512(); R];
        let q = quants.add(b * BLOCK_BYTES);
        for j in 0..GROUPS {
            let line = q.add(j * 64);
            // Past the tile's end this asks for the next tile's lines, which the same thread
            // reads next; a prefetch never faults.
            _mm_prefetch::<_MM_HINT_T0>(line.wrapping_add(PREFETCH_BYTES).cast());
            let w = _mm512_xor_si512(_mm512_loadu_si512(line.cast()), sign_bit);
            for r in 0..R {
                let xj = _mm512_set1_epi32(quad(x[r], b * BLOCK + 4 * j));
                if R == 1 && j % 2 == 1 {
                    odd[r] = _mm512_dpbusd_epi32(odd[r], w, xj);
                } else {
                    even[r] = _mm512_dpbusd_epi32(even[r], w, xj);
                }
            }
        }
        let dw = _mm512_cvtph_ps(_mm256_loadu_si256(scales.add(b * LANES).cast()));
        for r in 0..R {
            let dot = _mm512_cvtepi32_ps(_mm512_add_epi32(even[r], odd[r]));
            let s = _mm512_mul_ps(dw, _mm512_set1_ps(*d[r].add(b)));
            acc[r] = _mm512_fmadd_ps(s, dot, acc[r]);
        }
    }
    for r in 0..R {
        _mm512_storeu_ps(out[r].as_mut_ptr(), acc[r]);
    }
}

/// One tile against `R` rows (`R == out.len()`), 8 lanes per register, the two halves in turn
/// (one accumulator pair per row fits 4 rows in the registers).
///
/// Safety: the CPU has AVX2, FMA and F16C; the lengths passed `check_call`.
// The block index addresses several arrays at once, which iterators would hide.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2_rows<const R: usize>(tile: Tile<'_>, rows: Rows<'_>, out: &mut [[f32; LANES]]) {
    let x: [*const i8; R] = row_pointers(|r| rows.qs(r));
    let d: [*const f32; R] = row_pointers(|r| rows.d(r));
    let (scales, quants) = (tile.scales.as_ptr(), tile.quants.as_ptr());
    for half in 0..2 {
        let mut acc = [_mm256_setzero_ps(); R];
        for b in 0..rows.blocks() {
            let mut sum = [_mm256_setzero_si256(); R];
            let q = quants.add(b * BLOCK_BYTES + half * 32);
            for j in 0..GROUPS {
                let w = _mm256_loadu_si256(q.add(j * 64).cast());
                let magnitude = _mm256_abs_epi8(w);
                for r in 0..R {
                    let xj = _mm256_set1_epi32(quad(x[r], b * BLOCK + 4 * j));
                    sum[r] = add_products(sum[r], magnitude, w, xj);
                }
            }
            let dw = _mm256_cvtph_ps(_mm_loadu_si128(scales.add(b * LANES + half * 8).cast()));
            for r in 0..R {
                acc[r] = add_block(acc[r], sum[r], dw, *d[r].add(b));
            }
        }
        for r in 0..R {
            _mm256_storeu_ps(out[r].as_mut_ptr().add(half * 8), acc[r]);
        }
    }
}

/// One tile against one row, 8 lanes per register, both halves of each 64-byte group row in
/// one pass with prefetch, so each weight line is read once (see `q4_k/x86.rs`).
///
/// Safety: the CPU has AVX2, FMA and F16C; the lengths passed `check_call`.
// The block index addresses several arrays at once, which iterators would hide.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2_one_pass(tile: Tile<'_>, rows: Rows<'_>, out: &mut [f32; LANES]) {
    let (x, d) = (rows.qs(0).as_ptr(), rows.d(0).as_ptr());
    let (scales, quants) = (tile.scales.as_ptr(), tile.quants.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 2];
    for b in 0..rows.blocks() {
        let mut sum = [_mm256_setzero_si256(); 2];
        let q = quants.add(b * BLOCK_BYTES);
        for j in 0..GROUPS {
            let line = q.add(j * 64);
            _mm_prefetch::<_MM_HINT_T0>(line.wrapping_add(PREFETCH_BYTES).cast());
            let xj = _mm256_set1_epi32(quad(x, b * BLOCK + 4 * j));
            for (half, sum) in sum.iter_mut().enumerate() {
                let w = _mm256_loadu_si256(line.add(half * 32).cast());
                *sum = add_products(*sum, _mm256_abs_epi8(w), w, xj);
            }
        }
        for (half, acc) in acc.iter_mut().enumerate() {
            let dw = _mm256_cvtph_ps(_mm_loadu_si128(scales.add(b * LANES + half * 8).cast()));
            *acc = add_block(*acc, sum[half], dw, *d.add(b));
        }
    }
    for (half, acc) in acc.into_iter().enumerate() {
        _mm256_storeu_ps(out.as_mut_ptr().add(half * 8), acc);
    }
}

/// `sum` plus each lane's 4 products `w·x` (`magnitude == |w|`, `x` 4 bytes broadcast), widened
/// to i32 at once: a `vpmaddubsw` pair of `|w|·±x` reaches 2 · 128 · 127, so two would not fit
/// in i16.
#[inline]
#[target_feature(enable = "avx2")]
fn add_products(sum: __m256i, magnitude: __m256i, w: __m256i, x: __m256i) -> __m256i {
    let pairs = _mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(x, w));
    _mm256_add_epi32(sum, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
}

/// `acc + d_w · d_x · Σ w·x` for 8 lanes of one block: the epilogue of both AVX2 kernels.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn add_block(acc: __m256, sum: __m256i, d_w: __m256, d_x: f32) -> __m256 {
    let s = _mm256_mul_ps(d_w, _mm256_set1_ps(d_x));
    _mm256_fmadd_ps(s, _mm256_cvtepi32_ps(sum), acc)
}
