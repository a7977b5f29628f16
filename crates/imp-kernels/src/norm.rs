//! LayerNorm and RMSNorm over the last dimension, rows spread over every core, in f32 with the
//! two-pass variance (candle's fused op subtracts the squared mean, which loses digits).

use candle_core::{CpuStorage, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu::Isa;
use crate::host::{contiguous, narrow_into, widen, CustomOp, Element, FloatOp};
use crate::simd::{self, load_or_pad, store_or_trim, Kernel, Simd};
use crate::{Error, Result};

/// Elements per parallel task (whole rows).
const CHUNK: usize = 16 * 1024;

/// `y = (x - mean) / sqrt(var + eps) · weight + bias` per row of `weight.len()` values.
pub fn layer_norm_slice<T: Element>(
    isa: Isa,
    x: &[T],
    weight: &[T],
    bias: &[T],
    eps: f32,
    y: &mut [T],
) -> Result<()> {
    if bias.len() != weight.len() {
        return Err(Error::operands(
            "layer norm",
            format!("{} bias values for {} weights", bias.len(), weight.len()),
        ));
    }
    rows(isa, x, weight, Some(bias), eps, y)
}

/// `y = x / sqrt(mean(x²) + eps) · weight` per row of `weight.len()` values.
pub fn rms_norm_slice<T: Element>(
    isa: Isa,
    x: &[T],
    weight: &[T],
    eps: f32,
    y: &mut [T],
) -> Result<()> {
    rows(isa, x, weight, None, eps, y)
}

/// Layer norm when `bias` is given, RMS norm otherwise.
fn rows<T: Element>(
    isa: Isa,
    x: &[T],
    weight: &[T],
    bias: Option<&[T]>,
    eps: f32,
    y: &mut [T],
) -> Result<()> {
    let width = weight.len();
    if width == 0 || !x.len().is_multiple_of(width) || x.len() != y.len() {
        return Err(Error::operands(
            "norm",
            format!(
                "{} inputs and {} outputs are not rows of the {width} weights",
                x.len(),
                y.len()
            ),
        ));
    }
    let chunk = (CHUNK / width).max(1) * width;
    x.par_chunks(chunk)
        .zip(y.par_chunks_mut(chunk))
        .for_each(|(x, y)| {
            let (mut wide_x, mut wide_w, mut wide_b) = (Vec::new(), Vec::new(), Vec::new());
            let x = widen(x, &mut wide_x);
            let weight = widen(weight, &mut wide_w);
            let bias = bias.map(|b| widen(b, &mut wide_b));
            narrow_into(y, |y| {
                simd::run(
                    isa,
                    NormRows {
                        x,
                        weight,
                        bias,
                        eps,
                        y,
                    },
                )
            });
        });
    Ok(())
}

struct NormRows<'a> {
    x: &'a [f32],
    weight: &'a [f32],
    bias: Option<&'a [f32]>,
    eps: f32,
    y: &'a mut [f32],
}

impl Kernel for NormRows<'_> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let width = self.weight.len();
        for (x, y) in self
            .x
            .chunks_exact(width)
            .zip(self.y.chunks_exact_mut(width))
        {
            match self.bias {
                Some(bias) => layer_norm_row(s, x, self.weight, bias, self.eps, y),
                None => rms_norm_row(s, x, self.weight, self.eps, y),
            }
        }
    }
}

#[inline(always)]
fn layer_norm_row<S: Simd>(s: S, x: &[f32], weight: &[f32], bias: &[f32], eps: f32, y: &mut [f32]) {
    let n = x.len() as f32;
    let mut sum = s.splat(0.0);
    for i in (0..x.len()).step_by(S::LANES) {
        sum = s.add(sum, load_or_pad(s, x, i, 0.0));
    }
    let mean = s.reduce_sum(sum) / n;
    let mean_v = s.splat(mean);
    let mut squares = s.splat(0.0);
    for i in (0..x.len()).step_by(S::LANES) {
        // Padding with the mean adds nothing.
        let d = s.sub(load_or_pad(s, x, i, mean), mean_v);
        squares = s.mul_add(d, d, squares);
    }
    let inv_std = s.splat(1.0 / (s.reduce_sum(squares) / n + eps).sqrt());
    for i in (0..x.len()).step_by(S::LANES) {
        let normed = s.mul(s.sub(load_or_pad(s, x, i, 0.0), mean_v), inv_std);
        let v = s.mul_add(
            normed,
            load_or_pad(s, weight, i, 0.0),
            load_or_pad(s, bias, i, 0.0),
        );
        store_or_trim(s, y, i, v);
    }
}

#[inline(always)]
fn rms_norm_row<S: Simd>(s: S, x: &[f32], weight: &[f32], eps: f32, y: &mut [f32]) {
    let mut squares = s.splat(0.0);
    for i in (0..x.len()).step_by(S::LANES) {
        let v = load_or_pad(s, x, i, 0.0);
        squares = s.mul_add(v, v, squares);
    }
    let inv_rms = s.splat(1.0 / (s.reduce_sum(squares) / x.len() as f32 + eps).sqrt());
    for i in (0..x.len()).step_by(S::LANES) {
        let v = s.mul(
            s.mul(load_or_pad(s, x, i, 0.0), inv_rms),
            load_or_pad(s, weight, i, 0.0),
        );
        store_or_trim(s, y, i, v);
    }
}

/// The rows of `x` normalised; `weight` and `bias` are the last dimension's.
fn forward<T: Element>(
    x: (&[T], &Layout),
    weight: (&[T], &Layout),
    bias: Option<(&[T], &Layout)>,
    eps: f32,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let values = contiguous(x.0, x.1)?;
    let weight = contiguous(weight.0, weight.1)?;
    if x.1.dims().last() != Some(&weight.len()) {
        candle_core::bail!(
            "norm: {} weights for rows of {:?}",
            weight.len(),
            x.1.dims()
        );
    }
    let mut y = vec![T::default(); values.len()];
    let isa = simd::best();
    let done = match bias {
        Some((bias, layout)) => {
            let bias = contiguous(bias, layout)?;
            layer_norm_slice(isa, values, weight, bias, eps, &mut y)
        }
        None => rms_norm_slice(isa, values, weight, eps, &mut y),
    };
    done.map_err(candle_core::Error::wrap)?;
    Ok((T::into_storage(y), x.1.shape().clone()))
}

struct LayerNormOp {
    eps: f32,
}

impl FloatOp<3> for LayerNormOp {
    const NAME: &'static str = "imp-layer-norm";

    fn forward<T: Element>(
        &self,
        [x, weight, bias]: [(&[T], &Layout); 3],
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        forward(x, weight, Some(bias), self.eps)
    }
}

struct RmsNormOp {
    eps: f32,
}

impl FloatOp<2> for RmsNormOp {
    const NAME: &'static str = "imp-rms-norm";

    fn forward<T: Element>(
        &self,
        [x, weight]: [(&[T], &Layout); 2],
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        forward(x, weight, None, self.eps)
    }
}

/// Layer norm over the last dimension of a CPU tensor (see [`crate::host::fast_path`]).
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let op = LayerNormOp { eps: eps as f32 };
    Ok(x.contiguous()?
        .apply_op3_no_bwd(weight, bias, &CustomOp(op))?)
}

/// RMS norm over the last dimension of a CPU tensor (see [`crate::host::fast_path`]).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let op = RmsNormOp { eps: eps as f32 };
    Ok(x.contiguous()?.apply_op2_no_bwd(weight, &CustomOp(op))?)
}
