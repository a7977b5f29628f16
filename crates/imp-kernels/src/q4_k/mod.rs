//! Q4_K: super-blocks of 256 values, each an f16 scale `d` and minimum scale `dmin`, 8 pairs
//! of 6-bit sub-block scales `sc` and minimums `m` packed in 12 bytes, and 128 bytes of
//! nibbles; value `= d · sc_s · q - dmin · m_s` in sub-block `s` (32 values). Byte `i` of the
//! nibble chunk `p` (32 bytes) holds value `i` of sub-block `2p` (low nibble) and of `2p + 1`.
//!
//! Packed per tile and super-block: the 16 lanes' `d` then `dmin` (f16); `sc[8][16]` then
//! `m[8][16]` as bytes, unpacked from the 6-bit fields; 2048 bytes of nibbles as
//! `[p][group g][lane][4 bytes]`, group `g` of chunk `p` holding each lane's GGML bytes
//! `32p + 4g..32p + 4g + 4`. That is 2368 bytes per 16 · 256 values, 2.8% more than GGML's
//! 2304, for scales the kernels load without bit fiddling.

#[cfg(target_arch = "aarch64")]
mod neon;
#[cfg(target_arch = "x86_64")]
mod x86;

use half::f16;
use rayon::prelude::*;

use crate::act::{Rows, BLOCK};
use crate::packed::{Kernels, Packed, PackedFormat, LANES};

/// Values in a super-block.
const SUPER: usize = 256;
/// Sub-blocks (of 32 values) in a super-block.
const SUBS: usize = SUPER / BLOCK;
/// Bytes of a GGML Q4_K super-block: `d`, `dmin`, 12 bytes of 6-bit scales, 128 of nibbles.
const GGML_SUPER_BYTES: usize = 4 + 12 + SUPER / 2;
/// Packed bytes of one super-block of a tile: sub-block scales and minimums.
const SM_BYTES: usize = 2 * SUBS * LANES;
/// Packed nibble bytes of one super-block of a tile.
const QUANT_BYTES: usize = LANES * SUPER / 2;

/// The Q4_K format in the tile layout of the module doc.
pub struct Q4K;

/// A Q4_K matrix `[out, in]` in the tile layout of the module doc.
pub type PackedQ4K = Packed<Q4K>;

/// A whole matrix's scales, minimums and nibbles.
pub struct Store {
    /// `[tile][super][d, dmin][lane]`; the lanes past `out` of the last tile are zero.
    dd: Vec<f16>,
    /// `[tile][super][sc, m][sub][lane]`.
    sm: Vec<u8>,
    /// `[tile][super][p][g][lane][4 bytes]`.
    quants: Vec<u8>,
}

/// One tile's super-block scales `[super][d, dmin][lane]`, sub-block scales and minimums
/// `[super][sc, m][sub][lane]` and nibbles `[super][2048 bytes]`.
#[derive(Clone, Copy)]
pub struct Tile<'a> {
    dd: &'a [f16],
    sm: &'a [u8],
    quants: &'a [u8],
}

/// The 6-bit scale and minimum of sub-block `s` from a super-block's 12 packed bytes: the
/// first four pairs are the low 6 bits of bytes 0-3 and 4-7; the last four are the nibbles of
/// bytes 8-11 topped with the 2 high bits of bytes 0-3 (scales) and 4-7 (minimums).
fn scale_min(packed: &[u8], s: usize) -> (u8, u8) {
    if s < 4 {
        (packed[s] & 63, packed[s + 4] & 63)
    } else {
        let sc = (packed[s + 4] & 0x0F) | ((packed[s - 4] >> 6) << 4);
        let m = (packed[s + 4] >> 4) | ((packed[s] >> 6) << 4);
        (sc, m)
    }
}

impl PackedFormat for Q4K {
    const NAME: &'static str = "q4_k";
    const GGML_BLOCK: usize = SUPER;
    const GGML_BLOCK_BYTES: usize = GGML_SUPER_BYTES;
    const ACT_GROUP: usize = SUBS;
    type Store = Store;
    type Tile<'a> = Tile<'a>;

    fn repack(data: &[u8], out: usize, supers: usize) -> Store {
        let row_bytes = supers * GGML_SUPER_BYTES;
        let tiles = out.div_ceil(LANES);
        let mut dd = vec![f16::ZERO; tiles * supers * 2 * LANES];
        let mut sm = vec![0u8; tiles * supers * SM_BYTES];
        let mut quants = vec![0u8; tiles * supers * QUANT_BYTES];
        dd.par_chunks_mut(supers * 2 * LANES)
            .zip(sm.par_chunks_mut(supers * SM_BYTES))
            .zip(quants.par_chunks_mut(supers * QUANT_BYTES))
            .zip(data.par_chunks(LANES * row_bytes))
            .for_each(|(((dd, sm), quants), rows)| {
                for (lane, row) in rows.chunks_exact(row_bytes).enumerate() {
                    for (sb, src) in row.chunks_exact(GGML_SUPER_BYTES).enumerate() {
                        let dd = &mut dd[sb * 2 * LANES..(sb + 1) * 2 * LANES];
                        dd[lane] = f16::from_le_bytes([src[0], src[1]]);
                        dd[LANES + lane] = f16::from_le_bytes([src[2], src[3]]);
                        let sm = &mut sm[sb * SM_BYTES..(sb + 1) * SM_BYTES];
                        for s in 0..SUBS {
                            let (sc, m) = scale_min(&src[4..16], s);
                            sm[s * LANES + lane] = sc;
                            sm[(SUBS + s) * LANES + lane] = m;
                        }
                        let dst = &mut quants[sb * QUANT_BYTES..(sb + 1) * QUANT_BYTES];
                        // 32 groups of 4 bytes: chunk p's group g is group 8p + g.
                        for (group, bytes) in src[16..].chunks_exact(4).enumerate() {
                            let at = group * 4 * LANES + lane * 4;
                            dst[at..at + 4].copy_from_slice(bytes);
                        }
                    }
                }
            });
        Store { dd, sm, quants }
    }

    fn tile(store: &Store, supers: usize, t: usize) -> Tile<'_> {
        let n = supers;
        Tile {
            dd: &store.dd[t * n * 2 * LANES..(t + 1) * n * 2 * LANES],
            sm: &store.sm[t * n * SM_BYTES..(t + 1) * n * SM_BYTES],
            quants: &store.quants[t * n * QUANT_BYTES..(t + 1) * n * QUANT_BYTES],
        }
    }

    fn check(tile: &Tile<'_>, blocks: usize) {
        assert!(blocks.is_multiple_of(SUBS));
        let supers = blocks / SUBS;
        assert_eq!(tile.dd.len(), supers * 2 * LANES);
        assert_eq!(tile.sm.len(), supers * SM_BYTES);
        assert_eq!(tile.quants.len(), supers * QUANT_BYTES);
    }

    fn size_in_bytes(store: &Store) -> usize {
        store.quants.len() + store.sm.len() + store.dd.len() * 2
    }

    fn kernels<'a>() -> Kernels<Tile<'a>> {
        Kernels {
            scalar,
            #[cfg(target_arch = "x86_64")]
            avx2: x86::avx2,
            #[cfg(target_arch = "x86_64")]
            avx512_vnni: x86::avx512_vnni,
            #[cfg(target_arch = "aarch64")]
            neon_dotprod: neon::dotprod,
        }
    }
}

/// The reference kernel: `out[r][lane] = Σ_super d_x · (d · Σ_sub sc · Σ q4 · q8 - dmin ·
/// Σ_sub m · Σ q8)`, the sums over sub-blocks exact in integers.
fn scalar(tile: Tile<'_>, rows: Rows<'_>, out: &mut [[f32; LANES]]) {
    for (r, out) in out.iter_mut().enumerate() {
        let (xq, xd, xs) = (rows.qs(r), rows.d(r), rows.sums(r));
        *out = [0.0; LANES];
        for (sb, &dx) in xd.iter().enumerate() {
            let dd = &tile.dd[sb * 2 * LANES..(sb + 1) * 2 * LANES];
            let sm = &tile.sm[sb * SM_BYTES..(sb + 1) * SM_BYTES];
            let quants = &tile.quants[sb * QUANT_BYTES..(sb + 1) * QUANT_BYTES];
            for (lane, out) in out.iter_mut().enumerate() {
                let (d, dmin) = (dd[lane].to_f32(), dd[LANES + lane].to_f32());
                // At most 8 · 63 · 32 · 15 · 127 in magnitude: no i32 overflow.
                let (mut scaled, mut mins) = (0i32, 0i32);
                for s in 0..SUBS {
                    let b = sb * SUBS + s;
                    let x = &xq[b * BLOCK..(b + 1) * BLOCK];
                    let shift = 4 * (s % 2);
                    let mut dot = 0i32;
                    for (i, &x) in x.iter().enumerate() {
                        // Chunk s / 2, group i / 4, byte i % 4 of this lane.
                        let at = ((s / 2) * 8 + i / 4) * 4 * LANES + lane * 4 + i % 4;
                        dot += i32::from((quants[at] >> shift) & 0x0F) * i32::from(x);
                    }
                    scaled += i32::from(sm[s * LANES + lane]) * dot;
                    mins += i32::from(sm[(SUBS + s) * LANES + lane]) * i32::from(xs[b]);
                }
                *out += dx * (d * scaled as f32 - dmin * mins as f32);
            }
        }
    }
}
