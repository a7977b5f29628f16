//! Activations quantized for the integer dot products: every 32-value block of a row becomes
//! 32 int8 values with their sum, and every group of `group` blocks shares one f32 scale, as
//! GGML's q8_0 (one block per scale) and q8_K (eight, for the k-quants) do it: `d = max|x| /
//! 127`, `q = round(x / d)`, ties to even as GGML's SIMD paths round.

use rayon::prelude::*;

use crate::cpu::Isa;
use crate::simd::{self, Kernel, Simd};

/// Values per activation block (and per Q4_0 block and Q4_K sub-block).
pub const BLOCK: usize = 32;

/// `m` rows of `blocks * 32` values.
pub(crate) struct Activations {
    qs: Vec<i8>,
    /// One scale per group of blocks.
    d: Vec<f32>,
    /// `Σq` per block: the SIMD paths multiply unsigned weight values and correct for their
    /// offset (Q4_0's 8, Q8_0's 128, Q4_K's minimum) with it. At most `32 · 127` in magnitude,
    /// so it fits the i16 pairs Q4_K's AVX-512 kernel multiplies with its minimums.
    sums: Vec<i16>,
    blocks: usize,
    group: usize,
}

impl Activations {
    /// `x[m, blocks * 32]`, row-major, one scale per `group` blocks (`blocks` a multiple of it).
    pub(crate) fn quantize(x: &[f32], blocks: usize, group: usize) -> Self {
        Self::quantize_with(simd::best(), x, blocks, group)
    }

    /// [`Activations::quantize`] on the fused-kernel path `isa`: every path gives the same
    /// bytes and scales.
    fn quantize_with(isa: Isa, x: &[f32], blocks: usize, group: usize) -> Self {
        assert!(group > 0 && blocks.is_multiple_of(group));
        let width = blocks * BLOCK;
        let rows = x.len() / width;
        let groups = blocks / group;
        let mut qs = vec![0i8; rows * width];
        let mut d = vec![0f32; rows * groups];
        let mut sums = vec![0i16; rows * blocks];
        // Row chunks large enough that a rayon task is worth more than its scheduling.
        let chunk = 8192usize.div_ceil(width);
        qs.par_chunks_mut(chunk * width)
            .zip(d.par_chunks_mut(chunk * groups))
            .zip(sums.par_chunks_mut(chunk * blocks))
            .zip(x.par_chunks(chunk * width))
            .for_each(|(((qs, d), sums), x)| {
                let kernel = QuantizeGroups {
                    x,
                    qs,
                    d,
                    sums,
                    group,
                };
                simd::run(isa, kernel)
            });
        Self {
            qs,
            d,
            sums,
            blocks,
            group,
        }
    }

    /// Rows `start..start + len`.
    pub(crate) fn slice(&self, start: usize, len: usize) -> Rows<'_> {
        Rows {
            qs: &self.qs,
            d: &self.d,
            sums: &self.sums,
            blocks: self.blocks,
            group: self.group,
        }
        .slice(start, len)
    }
}

/// Groups of `group` blocks of 32 values quantized into `qs`, their scales `d` and the blocks'
/// sums `Σq`, in vectors of the path's width: one value at a time, this was 4 % of a q4_k
/// prefill (perf, AVX-512 EPYC).
struct QuantizeGroups<'a> {
    x: &'a [f32],
    qs: &'a mut [i8],
    d: &'a mut [f32],
    sums: &'a mut [i16],
    group: usize,
}

impl Kernel for QuantizeGroups<'_> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let width = self.group * BLOCK;
        let groups = self
            .x
            .chunks_exact(width)
            .zip(self.qs.chunks_exact_mut(width));
        let sums = self.sums.chunks_exact_mut(self.group);
        for ((x, qs), (d, sums)) in groups.zip(self.d.iter_mut().zip(sums)) {
            let mut amax = s.splat(0.0);
            for i in (0..width).step_by(S::LANES) {
                amax = s.max(amax, s.abs(s.load(&x[i..])));
            }
            *d = s.reduce_max(amax) / 127.0;
            let id = s.splat(if *d > 0.0 { 1.0 / *d } else { 0.0 });
            let blocks = x.chunks_exact(BLOCK).zip(qs.chunks_exact_mut(BLOCK));
            for ((x, qs), sum) in blocks.zip(sums) {
                // Integers below 2^24 in magnitude: the f32 sum is exact in any order.
                let mut total = s.splat(0.0);
                for i in (0..BLOCK).step_by(S::LANES) {
                    let q = s.round(s.mul(s.load(&x[i..]), id));
                    total = s.add(total, q);
                    s.store_i8(&mut qs[i..], q);
                }
                *sum = s.reduce_sum(total) as i16;
            }
        }
    }
}

/// A few consecutive quantized rows, the unit one kernel call multiplies with a weight tile.
#[derive(Clone, Copy)]
pub struct Rows<'a> {
    qs: &'a [i8],
    d: &'a [f32],
    sums: &'a [i16],
    blocks: usize,
    group: usize,
}

impl<'a> Rows<'a> {
    pub(crate) fn len(&self) -> usize {
        self.sums.len() / self.blocks
    }

    /// Rows `start..start + len` of these.
    pub(crate) fn slice(&self, start: usize, len: usize) -> Rows<'a> {
        let (b, g, w) = (self.blocks, self.blocks / self.group, self.blocks * BLOCK);
        Rows {
            qs: &self.qs[start * w..(start + len) * w],
            d: &self.d[start * g..(start + len) * g],
            sums: &self.sums[start * b..(start + len) * b],
            blocks: b,
            group: self.group,
        }
    }

    pub(crate) fn blocks(&self) -> usize {
        self.blocks
    }

    /// Blocks per scale.
    pub(crate) fn group(&self) -> usize {
        self.group
    }

    /// Row `r`'s int8 values, `blocks * 32` of them.
    pub(crate) fn qs(&self, r: usize) -> &'a [i8] {
        let w = self.blocks * BLOCK;
        &self.qs[r * w..(r + 1) * w]
    }

    /// Row `r`'s scales, one per group of blocks.
    pub(crate) fn d(&self, r: usize) -> &'a [f32] {
        let g = self.blocks / self.group;
        &self.d[r * g..(r + 1) * g]
    }

    /// Row `r`'s sums of int8 values per block.
    pub(crate) fn sums(&self, r: usize) -> &'a [i16] {
        &self.sums[r * self.blocks..(r + 1) * self.blocks]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_quantizes_like_the_scalar_path() {
        const WIDTH: usize = 16 * BLOCK;
        // Blocks whose maximum is 127 (scale 1 per block and per group of 8) and whose other
        // values are ties, a zero block, one huge value among small ones, then values from a
        // simple generator.
        let mut x: Vec<f32> = (0..8 * BLOCK)
            .map(|i| match i % BLOCK {
                0 => 127.0,
                j => j as f32 - 16.5,
            })
            .collect();
        x.extend([0.0; BLOCK]);
        x.extend((0..BLOCK).map(|k| if k == 7 { -3e4 } else { k as f32 * 1e-3 }));
        let mut state = 0x2545_f491_u32;
        x.extend((x.len()..5 * WIDTH).map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 8) as f32 / (1 << 24) as f32 * 20.0 - 10.0
        }));
        for group in [1, 8] {
            let want = Activations::quantize_with(Isa::Scalar, &x, WIDTH / BLOCK, group);
            for (i, (&q, &v)) in want.qs[..8 * BLOCK].iter().zip(&x).enumerate() {
                assert_eq!(want.d[i / BLOCK / group], 1.0);
                assert_eq!(f32::from(q), v.round_ties_even(), "{v}");
            }
            for (block, &sum) in want.qs.chunks(BLOCK).zip(&want.sums) {
                assert_eq!(block.iter().map(|&q| i16::from(q)).sum::<i16>(), sum);
            }
            for isa in Isa::available_of(&simd::PATHS) {
                let got = Activations::quantize_with(isa, &x, WIDTH / BLOCK, group);
                assert_eq!(got.qs, want.qs, "{isa:?}, group {group}");
                assert_eq!(got.d, want.d, "{isa:?}, group {group}");
                assert_eq!(got.sums, want.sums, "{isa:?}, group {group}");
            }
        }
    }
}
