//! x86-64 Q4_K kernels, the Q4_0 scheme of `q4_0/x86.rs` on the Q4_K layout: the low nibbles of a
//! 64-byte group row belong to sub-block `2p`, the high ones to `2p + 1`, so each chunk gives
//! two independent dot-product chains. The nibbles are unsigned as stored; the minimum term
//! `dmin · m · d_x · Σx` is subtracted apart. The activations have one scale per super-block.

use std::arch::x86_64::*;

use super::{Tile, Q4K, QUANT_BYTES, SM_BYTES, SUBS};
use crate::act::{Rows, BLOCK};
use crate::cpu::Isa;
use crate::packed::x86::{quad, row_pointers, with_row_count, PREFETCH_BYTES};
use crate::packed::{check_call, in_groups, LANES};

pub(super) fn avx512_vnni(tile: Tile<'_>, rows: Rows<'_>, out: &mut [[f32; LANES]]) {
    check_call::<Q4K>(Isa::Avx512Vnni, &tile, &rows, out);
    // Up to 8 rows at once, 3 registers each beside the weights and scales: each weight load
    // and unpack serves twice as many rows as in groups of 4 (128 rows, one thread, AVX-512
    // VNNI EPYC: 124 -> 135 G multiply-adds/s).
    // Safety: `check_call` made sure of the CPU features and the lengths.
    unsafe { with_row_count!(out.len(), vnni(tile, rows, out)) }
}

pub(super) fn avx2(tile: Tile<'_>, rows: Rows<'_>, out: &mut [[f32; LANES]]) {
    check_call::<Q4K>(Isa::Avx2, &tile, &rows, out);
    // At most 4 rows at once: their 3 registers each do not all fit, but a few spills cost less
    // than loading and unpacking each weight for 2 rows only (128 rows, AVX2-only AMD EPYC, 2
    // threads: 8 % more multiply-adds per second than 2 rows). One row (decode) is bound by
    // memory, more by the multiply-adds.
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

/// One tile against `R` rows (`R == out.len()`), all 16 lanes per register. The activations
/// have one scale per super-block, so a sub-block's dot products only take its weight scale,
/// shared by every row; the row's scale and the minimums (their integer products with the
/// block sums by `vpdpwssd`) come once per super-block. Against one activation scale per
/// sub-block, that is 2 instead of 4 vector operations per row and sub-block (128 rows, one
/// thread, AVX-512 VNNI EPYC: 138-140 -> 146-148 G multiply-adds/s).
///
/// Safety: the CPU has AVX-512 F, BW and VNNI; the lengths passed `check_call`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn vnni<const R: usize>(tile: Tile<'_>, rows: Rows<'_>, out: &mut [[f32; LANES]]) {
    let mask = _mm512_set1_epi8(0x0F);
    let x: [*const i8; R] = row_pointers(|r| rows.qs(r));
    let d: [*const f32; R] = row_pointers(|r| rows.d(r));
    let sums: [*const i16; R] = row_pointers(|r| rows.sums(r));
    // The running sums live in `out`, touched once per super-block, which leaves the registers
    // to the per-row dot products and partial sums.
    out.fill([0.0; LANES]);
    for sb in 0..rows.blocks() / SUBS {
        let dd = tile.dd.as_ptr().add(sb * 2 * LANES);
        let d_w = _mm512_cvtph_ps(_mm256_loadu_si256(dd.cast()));
        let dmin = _mm512_cvtph_ps(_mm256_loadu_si256(dd.add(LANES).cast()));
        let sm = tile.sm.as_ptr().add(sb * SM_BYTES);
        let q = tile.quants.as_ptr().add(sb * QUANT_BYTES);
        // `Σ_s d · sc_s · Σ q·x` of this super-block per row, the activation scale left out.
        let mut scaled = [_mm512_setzero_ps(); R];
        for p in 0..SUBS / 2 {
            // Sub-blocks 2p (low nibbles) and 2p + 1 (high nibbles).
            let b = sb * SUBS + 2 * p;
            let mut lo = [_mm512_setzero_si512(); R];
            let mut hi = [_mm512_setzero_si512(); R];
            for g in 0..8 {
                let line = q.add((p * 8 + g) * 64);
                // Past the tile's end this asks for the next tile's lines, which the same
                // thread reads next; a prefetch never faults.
                _mm_prefetch::<_MM_HINT_T0>(line.wrapping_add(PREFETCH_BYTES).cast());
                let v = _mm512_loadu_si512(line.cast());
                let wl = _mm512_and_si512(v, mask);
                let wh = _mm512_and_si512(_mm512_srli_epi16::<4>(v), mask);
                for r in 0..R {
                    let (xl, xh) = (
                        quad(x[r], b * BLOCK + 4 * g),
                        quad(x[r], (b + 1) * BLOCK + 4 * g),
                    );
                    lo[r] = _mm512_dpbusd_epi32(lo[r], wl, _mm512_set1_epi32(xl));
                    hi[r] = _mm512_dpbusd_epi32(hi[r], wh, _mm512_set1_epi32(xh));
                }
            }
            for (h, dots) in [lo, hi].iter().enumerate() {
                let sc = _mm_loadu_si128(sm.add((2 * p + h) * LANES).cast());
                let dsc = _mm512_mul_ps(d_w, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(sc)));
                for r in 0..R {
                    scaled[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dots[r]), dsc, scaled[r]);
                }
            }
        }
        // Each lane's minimums of sub-blocks 2k and 2k + 1 as an i16 pair, to multiply with the
        // pair of block sums of each row.
        let min_pairs: [__m512i; SUBS / 2] = std::array::from_fn(|k| {
            let [even, odd] = [2 * k, 2 * k + 1].map(|s| {
                let m = _mm_loadu_si128(sm.add((SUBS + s) * LANES).cast());
                _mm512_cvtepu8_epi32(m)
            });
            _mm512_or_si512(even, _mm512_slli_epi32::<16>(odd))
        });
        for r in 0..R {
            let mut mins = _mm512_setzero_si512();
            for (k, &pair) in min_pairs.iter().enumerate() {
                // Block sums 2k and 2k + 1, as `pair` holds their minimums.
                let sum_pair = sums[r]
                    .add(sb * SUBS + 2 * k)
                    .cast::<i32>()
                    .read_unaligned();
                mins = _mm512_dpwssd_epi32(mins, pair, _mm512_set1_epi32(sum_pair));
            }
            let super_block = _mm512_fnmadd_ps(dmin, _mm512_cvtepi32_ps(mins), scaled[r]);
            let acc = _mm512_loadu_ps(out[r].as_ptr());
            let acc = _mm512_fmadd_ps(_mm512_set1_ps(*d[r].add(sb)), super_block, acc);
            _mm512_storeu_ps(out[r].as_mut_ptr(), acc);
        }
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
    for half in 0..2 {
        let mut acc = [_mm256_setzero_ps(); R];
        for sb in 0..rows.blocks() / SUBS {
            let dd = tile.dd.as_ptr().add(sb * 2 * LANES + half * 8);
            let d_w = _mm256_cvtph_ps(_mm_loadu_si128(dd.cast()));
            let dmin = _mm256_cvtph_ps(_mm_loadu_si128(dd.add(LANES).cast()));
            let sm = tile.sm.as_ptr().add(sb * SM_BYTES + half * 8);
            let q = tile.quants.as_ptr().add(sb * QUANT_BYTES + half * 32);
            for p in 0..SUBS / 2 {
                let b = sb * SUBS + 2 * p;
                // Eight products of two pairs per i16 lane: at most 8 · 2 · 15 · 127 < 2^15.
                let mut lo = [_mm256_setzero_si256(); R];
                let mut hi = [_mm256_setzero_si256(); R];
                for g in 0..8 {
                    let v = _mm256_loadu_si256(q.add((p * 8 + g) * 64).cast());
                    let wl = _mm256_and_si256(v, mask);
                    let wh = _mm256_and_si256(_mm256_srli_epi16::<4>(v), mask);
                    for r in 0..R {
                        let xl = _mm256_set1_epi32(quad(x[r], b * BLOCK + 4 * g));
                        let xh = _mm256_set1_epi32(quad(x[r], (b + 1) * BLOCK + 4 * g));
                        lo[r] = _mm256_add_epi16(lo[r], _mm256_maddubs_epi16(wl, xl));
                        hi[r] = _mm256_add_epi16(hi[r], _mm256_maddubs_epi16(wh, xh));
                    }
                }
                for (h, dots) in [lo, hi].iter().enumerate() {
                    let scales = sub_scales(d_w, dmin, sm.add((2 * p + h) * LANES));
                    for r in 0..R {
                        let (d_x, x_sum) = (*d[r].add(sb), *sums[r].add(b + h));
                        acc[r] = add_sub_block(acc[r], dots[r], scales, d_x, x_sum);
                    }
                }
            }
        }
        for r in 0..R {
            _mm256_storeu_ps(out[r].as_mut_ptr().add(half * 8), acc[r]);
        }
    }
}

/// One tile against `R` rows (`R == out.len()`), 8 lanes per register, both halves of each
/// 64-byte group row in one pass with prefetch: each weight line is read once, so the memory
/// never waits for a second pass over the tile (one row on an AVX2-only AMD EPYC, 2 threads:
/// 16-17 % more GB/s than two passes; the spills of two rows cost prefill 6-16 %).
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
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    for sb in 0..rows.blocks() / SUBS {
        let dd = tile.dd.as_ptr().add(sb * 2 * LANES);
        let sm = tile.sm.as_ptr().add(sb * SM_BYTES);
        let q = tile.quants.as_ptr().add(sb * QUANT_BYTES);
        for p in 0..SUBS / 2 {
            let b = sb * SUBS + 2 * p;
            let mut lo = [[_mm256_setzero_si256(); 2]; R];
            let mut hi = [[_mm256_setzero_si256(); 2]; R];
            for g in 0..8 {
                let line = q.add((p * 8 + g) * 64);
                _mm_prefetch::<_MM_HINT_T0>(line.wrapping_add(PREFETCH_BYTES).cast());
                for half in 0..2 {
                    let v = _mm256_loadu_si256(line.add(half * 32).cast());
                    let wl = _mm256_and_si256(v, mask);
                    let wh = _mm256_and_si256(_mm256_srli_epi16::<4>(v), mask);
                    for r in 0..R {
                        let xl = _mm256_set1_epi32(quad(x[r], b * BLOCK + 4 * g));
                        let xh = _mm256_set1_epi32(quad(x[r], (b + 1) * BLOCK + 4 * g));
                        lo[r][half] = _mm256_add_epi16(lo[r][half], _mm256_maddubs_epi16(wl, xl));
                        hi[r][half] = _mm256_add_epi16(hi[r][half], _mm256_maddubs_epi16(wh, xh));
                    }
                }
            }
            for half in 0..2 {
                let d_w = _mm256_cvtph_ps(_mm_loadu_si128(dd.add(half * 8).cast()));
                let dmin = _mm256_cvtph_ps(_mm_loadu_si128(dd.add(LANES + half * 8).cast()));
                for (h, dots) in [&lo, &hi].into_iter().enumerate() {
                    let scales = sub_scales(d_w, dmin, sm.add((2 * p + h) * LANES + half * 8));
                    for r in 0..R {
                        let (d_x, x_sum) = (*d[r].add(sb), *sums[r].add(b + h));
                        let a = &mut acc[r][half];
                        *a = add_sub_block(*a, dots[r][half], scales, d_x, x_sum);
                    }
                }
            }
        }
    }
    for r in 0..R {
        for half in 0..2 {
            _mm256_storeu_ps(out[r].as_mut_ptr().add(half * 8), acc[r][half]);
        }
    }
}

/// The 8 lanes' `d · sc` and `dmin · m` of one sub-block, from `d`, `dmin` and the sub-block's
/// scales at `sc` (its minimums are `SUBS · LANES` bytes further).
///
/// Safety: 8 bytes readable at `sc` and at `sc + SUBS · LANES`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn sub_scales(d_w: __m256, dmin: __m256, sc: *const u8) -> (__m256, __m256) {
    let sc_m = [sc, sc.add(SUBS * LANES)]
        .map(|p| _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(p.cast()))));
    (_mm256_mul_ps(d_w, sc_m[0]), _mm256_mul_ps(dmin, sc_m[1]))
}

/// `acc + d · sc · d_x · Σ q·x - dmin · m · d_x · Σx` for 8 lanes of one sub-block, `dots`
/// holding each lane's `vpmaddubsw` pair sums of `q·x` and `x_sum` being `Σx`: the epilogue of
/// both AVX2 kernels.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn add_sub_block(
    acc: __m256,
    dots: __m256i,
    (dsc, dmm): (__m256, __m256),
    d_x: f32,
    x_sum: i16,
) -> __m256 {
    let dot = _mm256_cvtepi32_ps(_mm256_madd_epi16(dots, _mm256_set1_epi16(1)));
    let acc = _mm256_fmadd_ps(_mm256_mul_ps(dsc, _mm256_set1_ps(d_x)), dot, acc);
    _mm256_fnmadd_ps(dmm, _mm256_set1_ps(d_x * f32::from(x_sum)), acc)
}
