//! Q4_0: blocks of 32 values, an f16 scale `d` and 16 bytes of nibbles, value `= d · (q - 8)`,
//! byte `i` holding values `i` (low nibble) and `i + 16` (high nibble).
//!
//! Packed per tile and block: the 16 lanes' scales, then 256 bytes of nibbles as 4 groups `j`
//! of `[lane][4 bytes]`, group `j` holding each lane's GGML bytes `4j..4j + 4`.

#[cfg(target_arch = "aarch64")]
mod neon;
#[cfg(target_arch = "x86_64")]
mod x86;

use half::f16;
use rayon::prelude::*;

use crate::act::{Rows, BLOCK};
use crate::packed::{Kernels, Packed, PackedFormat, LANES};

/// Bytes of a GGML Q4_0 block: the f16 scale and 16 bytes of nibbles.
const GGML_BLOCK_BYTES: usize = 2 + BLOCK / 2;
/// Packed nibble bytes of one block of a tile.
const BLOCK_BYTES: usize = LANES * BLOCK / 2;

/// The Q4_0 format in the tile layout of the module doc.
pub struct Q4_0;

/// A Q4_0 matrix `[out, in]` in the tile layout of the module doc.
pub type PackedQ4_0 = Packed<Q4_0>;

/// A whole matrix's scales and nibbles.
pub struct Store {
    /// `[tile][block][lane]`; the lanes past `out` of the last tile are zero.
    scales: Vec<f16>,
    /// `[tile][block][group][lane][4 bytes]`.
    quants: Vec<u8>,
}

/// One tile's scales `[block][lane]` and nibbles `[block][256 bytes]`.
#[derive(Clone, Copy)]
pub struct Tile<'a> {
    scales: &'a [f16],
    quants: &'a [u8],
}

impl PackedFormat for Q4_0 {
    const NAME: &'static str = "q4_0";
    const GGML_BLOCK: usize = BLOCK;
    const GGML_BLOCK_BYTES: usize = GGML_BLOCK_BYTES;
    type Store = Store;
    type Tile<'a> = Tile<'a>;

    fn repack(data: &[u8], out: usize, blocks: usize) -> Store {
        let row_bytes = blocks * GGML_BLOCK_BYTES;
        let tiles = out.div_ceil(LANES);
        let mut scales = vec![f16::ZERO; tiles * blocks * LANES];
        // Nibbles of 8 are zeros, so the padding lanes hold the value 0 whatever their scale.
        let mut quants = vec![0x88u8; tiles * blocks * BLOCK_BYTES];
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
                            dst[at..at + 4].copy_from_slice(bytes);
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

/// The reference kernel: `out[r][lane] = Σ_blocks d_w · d_x · Σ (q4 - 8) · q8`.
fn scalar(tile: Tile<'_>, rows: Rows<'_>, out: &mut [[f32; LANES]]) {
    for (r, out) in out.iter_mut().enumerate() {
        let (xq, xd) = (rows.qs(r), rows.d(r));
        *out = [0.0; LANES];
        for b in 0..rows.blocks() {
            let scales = &tile.scales[b * LANES..(b + 1) * LANES];
            let quants = &tile.quants[b * BLOCK_BYTES..(b + 1) * BLOCK_BYTES];
            let x = &xq[b * BLOCK..(b + 1) * BLOCK];
            for (lane, out) in out.iter_mut().enumerate() {
                let mut dot = 0i32;
                for i in 0..BLOCK / 2 {
                    // Packed byte `i` of a lane holds values `i` (low nibble) and `i + 16`.
                    let byte = quants[(i / 4) * 4 * LANES + lane * 4 + i % 4];
                    dot += (i32::from(byte & 0x0F) - 8) * i32::from(x[i]);
                    dot += (i32::from(byte >> 4) - 8) * i32::from(x[i + BLOCK / 2]);
                }
                *out += scales[lane].to_f32() * xd[b] * dot as f32;
            }
        }
    }
}
