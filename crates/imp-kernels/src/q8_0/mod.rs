//! Q8_0: blocks of 32 values, an f16 scale `d` and 32 signed bytes, value `= d · q`.
//!
//! Packed in the layout of [`crate::packed::scaled`], as Q4_0 with bytes instead of nibbles:
//! per tile and block, the 16 lanes' scales, then 512 bytes as 8 groups `j` of
//! `[lane][4 bytes]`, group `j` holding each lane's GGML bytes `4j..4j + 4`; 1.6% more bytes
//! than GGML's (the scales of the last tile's empty lanes) and one copy of the weights.

#[cfg(target_arch = "aarch64")]
mod neon;
#[cfg(target_arch = "x86_64")]
mod x86;

use crate::act::{Rows, BLOCK};
use crate::packed::scaled::{ScaledFormat, Tile};
use crate::packed::{Kernels, Packed, LANES};

/// Signed bytes of a GGML Q8_0 block.
const PAYLOAD: usize = BLOCK;
/// Packed bytes of one block of a tile.
const BLOCK_BYTES: usize = LANES * PAYLOAD;

/// The Q8_0 format in the tile layout of the module doc.
pub struct Q8_0;

/// A Q8_0 matrix `[out, in]` in the tile layout of the module doc.
pub type PackedQ8_0 = Packed<Q8_0>;

impl ScaledFormat for Q8_0 {
    const LABEL: &'static str = "q8_0";
    const PAYLOAD: usize = PAYLOAD;
    const FILL: u8 = 0;

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
                        i32::from(quants[(i / 4) * 4 * LANES + lane * 4 + i % 4] as i8)
                            * i32::from(x[i])
                    })
                    .sum();
                *out += scales[lane].to_f32() * xd[b] * dot as f32;
            }
        }
    }
}
