//! Q4_0: blocks of 32 values, an f16 scale `d` and 16 bytes of nibbles, value `= d · (q - 8)`,
//! byte `i` holding values `i` (low nibble) and `i + 16` (high nibble).
//!
//! Packed per tile and block: the 16 lanes' scales, then 256 bytes of nibbles as 4 groups `j`
//! of `[lane][4 bytes]`, group `j` holding each lane's GGML bytes `4j..4j + 4`.

use std::fmt;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape};
use half::f16;
use rayon::prelude::*;

use super::act::Rows;
use super::{Isa, BLOCK, LANES};
use crate::Result;

/// Bytes of a GGML Q4_0 block: the f16 scale and 16 bytes of nibbles.
const GGML_BLOCK_BYTES: usize = 2 + BLOCK / 2;
/// Packed nibble bytes of one block of a tile.
pub(super) const BLOCK_BYTES: usize = LANES * BLOCK / 2;

/// One tile's scales `[block][lane]` and nibbles `[block][256 bytes]`.
#[derive(Clone, Copy)]
pub(super) struct Tile<'a> {
    pub(super) scales: &'a [f16],
    pub(super) quants: &'a [u8],
}

impl Tile<'_> {
    /// Panics unless the tile holds `blocks` blocks: the SIMD kernels' pointer arithmetic
    /// relies on it.
    pub(super) fn check(&self, blocks: usize) {
        assert_eq!(self.scales.len(), blocks * LANES);
        assert_eq!(self.quants.len(), blocks * BLOCK_BYTES);
    }
}

/// A Q4_0 matrix `[out, in]` in the tile layout of the module doc.
pub struct PackedQ4_0 {
    out: usize,
    blocks: usize,
    /// `[tile][block][lane]`; the lanes past `out` of the last tile are zero.
    scales: Vec<f16>,
    /// `[tile][block][group][lane][4 bytes]`.
    quants: Vec<u8>,
}

impl fmt::Debug for PackedQ4_0 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PackedQ4_0[{}, {}]", self.out, self.in_features())
    }
}

impl PackedQ4_0 {
    /// Repacks the GGML Q4_0 bytes of a matrix `[out, in]`, `in` a multiple of 32.
    pub fn from_ggml(data: &[u8], out: usize, in_features: usize) -> Result<Self> {
        let blocks =
            super::ggml_blocks_per_row("q4_0", data, out, in_features, BLOCK, GGML_BLOCK_BYTES)?;
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
        Ok(Self {
            out,
            blocks,
            scales,
            quants,
        })
    }

    pub fn out_features(&self) -> usize {
        self.out
    }

    pub fn in_features(&self) -> usize {
        self.blocks * BLOCK
    }

    /// Bytes the kernels stream per product: nibbles and scales, tile padding included.
    pub fn size_in_bytes(&self) -> usize {
        self.quants.len() + self.scales.len() * 2
    }

    fn tile(&self, t: usize) -> Tile<'_> {
        let (s, q) = (self.blocks * LANES, self.blocks * BLOCK_BYTES);
        Tile {
            scales: &self.scales[t * s..(t + 1) * s],
            quants: &self.quants[t * q..(t + 1) * q],
        }
    }

    /// `y[m, out] = x[m, in] · Wᵀ` with the fastest kernel of this CPU.
    pub fn matmul(&self, x: &[f32], y: &mut [f32]) -> Result<()> {
        self.matmul_with(Isa::best(), x, y)
    }

    /// `y[m, out] = x[m, in] · Wᵀ` with the kernel for `isa`.
    pub fn matmul_with(&self, isa: Isa, x: &[f32], y: &mut [f32]) -> Result<()> {
        let kernel = kernel(isa).ok_or_else(|| isa.unavailable())?;
        super::matmul(kernel, |t| self.tile(t), self.out, self.blocks, x, y)
    }
}

/// A kernel for Q4_0 tiles (see [`super::Kernel`]).
type TileKernel = fn(Tile<'_>, Rows<'_>, &mut [[f32; LANES]]);

/// The kernel for `isa`, where this CPU runs it.
fn kernel(isa: Isa) -> Option<TileKernel> {
    if !isa.is_available() {
        return None;
    }
    match isa {
        Isa::Scalar => Some(scalar),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => Some(super::x86::avx2),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => Some(super::x86::avx512_vnni),
        #[cfg(target_arch = "aarch64")]
        Isa::NeonDotprod => Some(super::neon::dotprod),
        _ => None,
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

impl CustomOp1 for PackedQ4_0 {
    fn name(&self) -> &'static str {
        "q4_0-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (out, width) = (self.out, self.in_features());
        super::cpu_fwd(self.name(), out, width, storage, layout, |x, y| {
            self.matmul(x, y)
        })
    }
}
