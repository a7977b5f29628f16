//! Normalisation layers: LayerNorm (SigLIP, Phi-2) and RMSNorm (Qwen2, Phi-3).

use candle_core::{Module, Tensor};
use imp_kernels::{self as kernels, host::fast_path};

use crate::Result;

#[derive(Debug, Clone)]
pub enum Norm {
    Layer(candle_nn::LayerNorm),
    Rms(candle_nn::RmsNorm),
}

impl Norm {
    pub fn layer(weight: Tensor, bias: Tensor, eps: f64) -> Self {
        Self::Layer(candle_nn::LayerNorm::new(weight, bias, eps))
    }

    pub fn rms(weight: Tensor, eps: f64) -> Self {
        Self::Rms(candle_nn::RmsNorm::new(weight, eps))
    }

    /// Our fused kernels for CPU inference, candle's ops otherwise (other devices, training).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _span = tracing::trace_span!("norm").entered();
        Ok(match self {
            Self::Layer(norm) => match norm.bias() {
                Some(bias) if fast_path(&[x, norm.weight(), bias]) => {
                    kernels::norm::layer_norm(x, norm.weight(), bias, norm.eps())?
                }
                _ => norm.forward(x)?,
            },
            Self::Rms(norm) if fast_path(&[x, norm.weight()]) => {
                kernels::norm::rms_norm(x, norm.weight(), norm.eps())?
            }
            Self::Rms(norm) => norm.forward(x)?,
        })
    }
}
