//! GELU over a whole tensor on every core, with vectorised exponentials where candle calls libm's
//! `tanhf` / `erff` one element at a time.

use candle_core::{CpuStorage, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu::Isa;
use crate::host::{contiguous, narrow_into, widen, CustomOp, Element, FloatOp};
use crate::simd::{self, load_or_pad, store_or_trim, Kernel, Simd};
use crate::Result;

/// The two forms of GELU the models use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gelu {
    /// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`: SigLIP's and Phi-2's `gelu_pytorch_tanh` /
    /// `gelu_new`, candle's `Tensor::gelu`.
    Tanh,
    /// `0.5·x·(1 + erf(x/√2))`: the projector's `nn.GELU()`, candle's `Tensor::gelu_erf`.
    Erf,
}

/// Elements per parallel task: large enough to hide rayon's overhead.
const CHUNK: usize = 16 * 1024;

/// `y = gelu(x)` element-wise with the given path (one of [`simd::PATHS`]), on every core.
pub fn gelu_slice<T: Element>(isa: Isa, form: Gelu, x: &[T], y: &mut [T]) {
    assert_eq!(x.len(), y.len(), "gelu: input and output lengths differ");
    x.par_chunks(CHUNK)
        .zip(y.par_chunks_mut(CHUNK))
        .for_each(|(x, y)| {
            let mut wide = Vec::new();
            let x = widen(x, &mut wide);
            narrow_into(y, |y| simd::run(isa, GeluRun { form, x, y }));
        });
}

struct GeluRun<'a> {
    form: Gelu,
    x: &'a [f32],
    y: &'a mut [f32],
}

impl Kernel for GeluRun<'_> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let (x, y) = (self.x, self.y);
        for i in (0..x.len()).step_by(S::LANES) {
            let v = load_or_pad(s, x, i, 0.0);
            let v = match self.form {
                Gelu::Tanh => simd::gelu_tanh(s, v),
                Gelu::Erf => simd::gelu_erf(s, v),
            };
            store_or_trim(s, y, i, v);
        }
    }
}

struct GeluOp(Gelu);

impl FloatOp<1> for GeluOp {
    const NAME: &'static str = "imp-gelu";

    fn forward<T: Element>(
        &self,
        [(values, layout)]: [(&[T], &Layout); 1],
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous(values, layout)?;
        let mut y = vec![T::default(); x.len()];
        gelu_slice(simd::best(), self.0, x, &mut y);
        Ok((T::into_storage(y), layout.shape().clone()))
    }
}

/// GELU of `form` over a CPU tensor (see [`crate::host::fast_path`]); `x.gelu()` or
/// `x.gelu_erf()` with a vectorised exponential.
pub fn gelu(x: &Tensor, form: Gelu) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1_no_bwd(&CustomOp(GeluOp(form)))?)
}
