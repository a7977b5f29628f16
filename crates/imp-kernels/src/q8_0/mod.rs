//! Q8_0: blocks of 32 values, an f16 scale `d` and 32 signed bytes, value `= d · q`.
//!
//! Packed per tile and block: the 16 lanes' scales, then 512 bytes as 8 groups `j` of
//! `[lane][4 bytes]`, group `j` holding each lane's GGML bytes `4j..4j + 4`: the same tile
//! layout as Q4_0's with bytes instead of nibbles, 1.6% more bytes than GGML's (the scales
//! of the last tile's empty lanes) and one copy of the weights.

#[cfg(target_arch = "aarch64")]
mod neon;
#[cfg(target_arch = "x86_64")]
mod x86;

use half::f16;
use rayon::prelude::*;

use crate::act::{Rows, BLOCK};
use crate::packed::{Kernels, Packed, PackedFormat, LANES};

/// Bytes of a GGML Q8_0 block: the f16 scale and 32 signed bytes.
const GGML_BLOCK_BYTES: usize = 2 + BLOCK;
/// Packed bytes of one block of a tile.
const BLOCK_BYTES: usize = LANES * BLOCK;

/// The Q8_0 format in the tile layout of the module doc.
pub struct Q8_0;

/// A Q8_0 matrix `[out, in]` in the tile layout of the module doc.
pub type PackedQ8_0 = Packed<Q8_0>;

/// A whole matrix's scales and bytes.
pub struct Store {
    /// `[tile][block][lane]`; the lanes past `out` of the last tile are zero.
    scales: Vec<f16>,
    /// `[tile][block][group][lane][4 bytes]`, as `i8`.
    quants: Vec<i8>,
}

/// One tile's scales `[block][lane]` and values `[block][512 bytes]`.
#[derive(Clone, Copy)]
pub struct Tile<'a> {
    scales: &'a [f16],
    quants: &'a [i8],
}

impl PackedFormat for Q8_0 {
    const NAME: &'static str = "q8_0";
    const GGML_BLOCK: usize = BLOCK;
    const GGML_BLOCK_BYTES: usize = GGML_BLOCK_BYTES;
    type Store = Store;
    type Tile<'a> = Tile<'a>;

    fn repack(data: &[u8], out: usize, blocks: usize) -> Store {
        let row_bytes = blocks * GGML_BLOCK_BYTES;
        let tiles = out.div_ceil(LANES);
        let mut scales = vec![f16::ZERO; tiles * blocks * LANES];
        let mut quants = vec![0i8; tiles * blocks * BLOCK_BYTES];
        scales
            .par_chunks_mut(blocks * LANES)
            .zip(quants.par_chunks_mut(blocks * BLOCK_BYTES))
            .zip(data.par_chunks(LANES * row_bytes))
            .for_each(|((scales, quants), rows)| {
                for (lane, row) in rows.chunks_exact(row_bytes).enumerate() {
                    for (b, src) in row.chunks_exact(GGML_BLOCK_BYTES).enumerate() {
                        scales[b * LANES + lane] = f16::from_le_bytes([src[0], src[1]]);
                        let dst = &mut quants[b * BLOCK_BYTES..(b + 1) * BLOCK_BYTES];
                        for (j, bytes) in src[2..].chunks_exact(4).enumerate() {
                            let at = j * 4 * LANES + lane * 4;
                            for (d, &s) in dst[at..at + 4].iter_mut().zip(bytes) {
                                *d = s as i8;
                            }
                        }
                    }
                }
            });
        Store { scales, quants }
    }

    fn tile(store: &Store, blocks: usize, t: usize) -> Tile<'_> {
        let (s, q) = (blocks * LANES, blocks * BLOCK_BYTES);
        Tile {
            scales: &store.scales[t * s..(t + 1) * s],
            quants: &store.quants[t * q..(t + 1) * q],
        }
    }

    fn check(tile: &Tile<'_>, blocks: usize) {
        assert_eq!(tile.scales.len(), blocks * LANES);
        assert_eq!(tile.quants.len(), blocks * BLOCK_BYTES);
    }

    fn size_in_bytes(store: &Store) -> usize {
        store.quants.len() + store.scales.len() * 2
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

/// The reference kernel: `out[r][lane] = Σ_blocks d_w · d_x · Σ q8_w · q8_x`.
fn scalar(tile: Tile<'_>, rows: Rows<'_>, out: &mut [[f32; LANES]]) {
    for (r, out) in out.iter_mut().enumerate() {
        let (xq, xd) = (rows.qs(r), rows.d(r));
        *out = [0.0; LANES];
        for b in 0..rows.blocks() {
            let scales = &tile.scales[b * LANES..(b + 1) * LANES];
            let quants = &tile.quants[b * BLOCK_BYTES..(b + 1) * BLOCK_BYTES];
            let x = &xq[b * BLOCK..(b + 1) * BLOCK];
            for (lane, out) in out.iter_mut().enumerate() {
                let dot: i32 = (0..BLOCK)
                    .map(|i| {
                        i32::from(quants[(i / 4) * 4 * LANES + lane * 4 + i % 4]) * i32::from(x[i])
                    })
                    .sum();
                *out += scales[lane].to_f32() * xd[b] * dot as f32;
            }
        }
    }
}
