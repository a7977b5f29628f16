//! The tile layout Q4_0 and Q8_0 share: 32-value blocks with one f16 scale each.
//!
//! Per tile and block: the 16 lanes' scales, then `LANES · PAYLOAD` bytes as groups `j` of
//! `[lane][4 bytes]`, group `j` holding each lane's GGML payload bytes `4j..4j + 4`; `PAYLOAD`
//! is the bytes of values in a GGML block (16 nibble bytes for Q4_0, 32 bytes for Q8_0). A
//! format in this layout implements [`ScaledFormat`] and gets [`PackedFormat`] from it.

use half::f16;
use rayon::prelude::*;

use super::{Kernels, PackedFormat, LANES};
use crate::act::BLOCK;

/// A GGML format of 32-value blocks, each an f16 scale and `PAYLOAD` bytes of values.
pub trait ScaledFormat: 'static {
    /// The format's name in messages.
    const LABEL: &'static str;
    /// Bytes of values in a GGML block.
    const PAYLOAD: usize;
    /// What the padding lanes of the last tile hold: a byte that decodes to the value 0.
    const FILL: u8;
    /// The format's kernel for each path.
    fn kernels<'a>() -> Kernels<Tile<'a>>;
}

/// A whole matrix's scales and payload bytes.
pub struct Store {
    /// `[tile][block][lane]`; the lanes past `out` of the last tile are zero.
    scales: Vec<f16>,
    /// `[tile][block][group][lane][4 bytes]`.
    quants: Vec<u8>,
}

/// One tile's scales `[block][lane]` and payload `[block][LANES · PAYLOAD bytes]`.
#[derive(Clone, Copy)]
pub struct Tile<'a> {
    pub(crate) scales: &'a [f16],
    pub(crate) quants: &'a [u8],
}

impl<F: ScaledFormat> PackedFormat for F {
    const NAME: &'static str = F::LABEL;
    const GGML_BLOCK: usize = BLOCK;
    const GGML_BLOCK_BYTES: usize = 2 + F::PAYLOAD;
    const ACT_GROUP: usize = 1;
    type Store = Store;
    type Tile<'a> = Tile<'a>;

    fn repack(data: &[u8], out: usize, blocks: usize) -> Store {
        let ggml_bytes = Self::GGML_BLOCK_BYTES;
        let block_bytes = LANES * F::PAYLOAD;
        let row_bytes = blocks * ggml_bytes;
        let tiles = out.div_ceil(LANES);
        let mut scales = vec![f16::ZERO; tiles * blocks * LANES];
        let mut quants = vec![F::FILL; tiles * blocks * block_bytes];
        scales
            .par_chunks_mut(blocks * LANES)
            .zip(quants.par_chunks_mut(blocks * block_bytes))
            .zip(data.par_chunks(LANES * row_bytes))
            .for_each(|((scales, quants), rows)| {
                for (lane, row) in rows.chunks_exact(row_bytes).enumerate() {
                    for (b, src) in row.chunks_exact(ggml_bytes).enumerate() {
                        scales[b * LANES + lane] = f16::from_le_bytes([src[0], src[1]]);
                        let dst = &mut quants[b * block_bytes..(b + 1) * block_bytes];
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
        let (s, q) = (blocks * LANES, blocks * LANES * F::PAYLOAD);
        Tile {
            scales: &store.scales[t * s..(t + 1) * s],
            quants: &store.quants[t * q..(t + 1) * q],
        }
    }

    fn check(tile: &Tile<'_>, blocks: usize) {
        assert_eq!(tile.scales.len(), blocks * LANES);
        assert_eq!(tile.quants.len(), blocks * LANES * F::PAYLOAD);
    }

    fn size_in_bytes(store: &Store) -> usize {
        store.quants.len() + store.scales.len() * 2
    }

    fn kernels<'a>() -> Kernels<Tile<'a>> {
        <F as ScaledFormat>::kernels()
    }
}
