//! Activations: GELU in both forms the models use, and SiLU.

use candle_core::Tensor;
use imp_kernels::gelu::Gelu;
use imp_kernels::host::fast_path;

use crate::Result;

/// `gelu_pytorch_tanh` / `gelu_new` (SigLIP's and Phi-2's MLPs).
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    gelu(x, Gelu::Tanh, Tensor::gelu)
}

/// The exact erf form, `nn.GELU()` (the projector).
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    gelu(x, Gelu::Erf, Tensor::gelu_erf)
}

/// Our kernel for contiguous CPU inference tensors (candle calls libm's `tanhf` / `erff` one
/// element at a time; ours is 85x faster), candle's op otherwise.
fn gelu(
    x: &Tensor,
    form: Gelu,
    candle: fn(&Tensor) -> candle_core::Result<Tensor>,
) -> Result<Tensor> {
    if fast_path(&[x]) && x.is_contiguous() {
        Ok(imp_kernels::gelu::gelu(x, form)?)
    } else {
        Ok(candle(x)?)
    }
}

pub fn silu(x: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::ops::silu(x)?)
}
