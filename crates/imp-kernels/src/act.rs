//! Activations quantized for the integer dot products: every 32-value block of a row becomes
//! 32 int8 values and one f32 scale, as GGML's q8_0 does it (`d = max|x| / 127`, `q =
//! round(x / d)`, halves away from zero), but with the scale kept in f32.

use rayon::prelude::*;

/// Values per activation block (and per Q4_0 block and Q4_K sub-block).
pub const BLOCK: usize = 32;

/// `m` rows of `blocks * 32` values.
pub(crate) struct Activations {
    qs: Vec<i8>,
    d: Vec<f32>,
    /// `Σq` per block: the SIMD paths multiply unsigned weight nibbles and correct for their
    /// offset (Q4_0's 8, Q4_K's minimum) with it.
    sums: Vec<i32>,
    /// `d · Σq` per block, the factor of Q4_K's minimum term, computed once for every tile.
    scaled_sums: Vec<f32>,
    blocks: usize,
}

impl Activations {
    /// `x[m, blocks * 32]`, row-major.
    pub(crate) fn quantize(x: &[f32], blocks: usize) -> Self {
        let width = blocks * BLOCK;
        let rows = x.len() / width;
        let mut qs = vec![0i8; rows * width];
        let mut d = vec![0f32; rows * blocks];
        let mut sums = vec![0i32; rows * blocks];
        // Row chunks large enough that a rayon task is worth more than its scheduling.
        let chunk = 8192usize.div_ceil(width);
        qs.par_chunks_mut(chunk * width)
            .zip(d.par_chunks_mut(chunk * blocks))
            .zip(sums.par_chunks_mut(chunk * blocks))
            .zip(x.par_chunks(chunk * width))
            .for_each(|(((qs, d), sums), x)| {
                for (((qs, d), sum), x) in qs
                    .chunks_exact_mut(BLOCK)
                    .zip(d)
                    .zip(sums)
                    .zip(x.chunks_exact(BLOCK))
                {
                    (*d, *sum) = quantize_block(x, qs.try_into().expect("a block"));
                }
            });
        let scaled_sums = d.iter().zip(&sums).map(|(&d, &s)| d * s as f32).collect();
        Self {
            qs,
            d,
            sums,
            scaled_sums,
            blocks,
        }
    }

    /// Rows `start..start + len`.
    pub(crate) fn slice(&self, start: usize, len: usize) -> Rows<'_> {
        Rows {
            qs: &self.qs,
            d: &self.d,
            sums: &self.sums,
            scaled_sums: &self.scaled_sums,
            blocks: self.blocks,
        }
        .slice(start, len)
    }
}

/// The scale and the value sum of one block, its int8 values written to `qs`.
fn quantize_block(x: &[f32], qs: &mut [i8; BLOCK]) -> (f32, i32) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    let mut sum = 0i32;
    for (q, &v) in qs.iter_mut().zip(x) {
        // |v * id| <= 127 up to rounding, so the cast never saturates meaningfully.
        *q = round(v * id) as i8;
        sum += i32::from(*q);
    }
    (d, sum)
}

/// `v.round()` (halves away from zero) for |v| < 2^23, inline: x86-64's baseline instruction
/// set has no rounding instruction, so `f32::round` is a call into libm.
fn round(v: f32) -> i32 {
    let t = v as i32;
    // Exact: `v` and its truncation share the exponent range.
    let frac = v - t as f32;
    t + i32::from(frac >= 0.5) - i32::from(frac <= -0.5)
}

/// A few consecutive quantized rows, the unit one kernel call multiplies with a weight tile.
#[derive(Clone, Copy)]
pub struct Rows<'a> {
    qs: &'a [i8],
    d: &'a [f32],
    sums: &'a [i32],
    scaled_sums: &'a [f32],
    blocks: usize,
}

impl<'a> Rows<'a> {
    pub(crate) fn len(&self) -> usize {
        self.d.len() / self.blocks
    }

    /// Rows `start..start + len` of these.
    pub(crate) fn slice(&self, start: usize, len: usize) -> Rows<'a> {
        let (b, w) = (self.blocks, self.blocks * BLOCK);
        Rows {
            qs: &self.qs[start * w..(start + len) * w],
            d: &self.d[start * b..(start + len) * b],
            sums: &self.sums[start * b..(start + len) * b],
            scaled_sums: &self.scaled_sums[start * b..(start + len) * b],
            blocks: b,
        }
    }

    pub(crate) fn blocks(&self) -> usize {
        self.blocks
    }

    /// Row `r`'s int8 values, `blocks * 32` of them.
    pub(crate) fn qs(&self, r: usize) -> &'a [i8] {
        let w = self.blocks * BLOCK;
        &self.qs[r * w..(r + 1) * w]
    }

    /// Row `r`'s block scales.
    pub(crate) fn d(&self, r: usize) -> &'a [f32] {
        &self.d[r * self.blocks..(r + 1) * self.blocks]
    }

    /// Row `r`'s sums of int8 values per block.
    pub(crate) fn sums(&self, r: usize) -> &'a [i32] {
        &self.sums[r * self.blocks..(r + 1) * self.blocks]
    }

    /// Row `r`'s `d · Σq` per block.
    pub(crate) fn scaled_sums(&self, r: usize) -> &'a [f32] {
        &self.scaled_sums[r * self.blocks..(r + 1) * self.blocks]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_is_f32_round() {
        // Quarters hit every tie; the neighbours of the ties test the comparisons.
        for k in -520..=520 {
            let v = k as f32 / 4.0;
            for v in [v, v.next_up(), v.next_down()] {
                assert_eq!(round(v), v.round() as i32, "{v}");
            }
        }
        assert_eq!(round(f32::NAN), 0);
    }
}
