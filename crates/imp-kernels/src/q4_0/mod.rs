//! Q4_0: blocks of 32 values, an f16 scale `d` and 16 bytes of nibbles, value `= d · (q - 8)`,
//! byte `i` holding values `i` (low nibble) and `i + 16` (high nibble).
//!
//! Packed in the layout of [`crate::packed::scaled`]: per tile and block, the 16 lanes' scales,
//! then 256 bytes of nibbles as 4 groups `j` of `[lane][4 bytes]`, group `j` holding each lane's
//! GGML bytes `4j..4j + 4`.

#[cfg(target_arch = "aarch64")]
mod neon;
#[cfg(target_arch = "x86_64")]
mod x86;

use crate::act::{Rows, BLOCK};
use crate::packed::scaled::{ScaledFormat, Tile};
use crate::packed::{Kernels, Packed, LANES};

/// Nibble bytes of a GGML Q4_0 block.
const PAYLOAD: usize = BLOCK / 2;
/// Packed bytes of one block of a tile.
const BLOCK_BYTES: usize = LANES * PAYLOAD;

/// The Q4_0 format in the tile layout of the module doc.
pub struct Q4_0;

/// A Q4_0 matrix `[out, in]` in the tile layout of the module doc.
pub type PackedQ4_0 = Packed<Q4_0>;

impl ScaledFormat for Q4_0 {
    const LABEL: &'static str = "q4_0";
    const PAYLOAD: usize = PAYLOAD;
    // Nibbles of 8 are zeros, so the padding lanes hold the value 0 whatever their scale.
    const FILL: u8 = 0x88;

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
