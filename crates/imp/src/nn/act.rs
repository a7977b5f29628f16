//! Activations: GELU in both forms the models use, and SiLU.

use candle_core::Tensor;

use crate::kernels;
use crate::Result;

/// `gelu_pytorch_tanh` / `gelu_new` (SigLIP's and Phi-2's MLPs).
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    kernels::gelu::gelu(x)
}

/// The exact erf form, `nn.GELU()` (the projector).
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    kernels::gelu::gelu_erf(x)
}

pub fn silu(x: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::ops::silu(x)?)
}
