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

    /// Our fused kernels for CPU inference; candle's fused ops on other devices; composed ops
    /// (in f32) when gradients are tracked, since candle's fused norms have no backward.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _span = tracing::trace_span!("norm").entered();
        let tracked = x.track_op();
        Ok(match self {
            Self::Layer(norm) => match norm.bias() {
                Some(bias) if fast_path(&[x, norm.weight(), bias]) => {
                    kernels::norm::layer_norm(x, norm.weight(), bias, norm.eps())?
                }
                Some(bias) if tracked => {
                    candle_nn::ops::layer_norm_slow(x, norm.weight(), bias, norm.eps() as f32)?
                }
                _ => norm.forward(x)?,
            },
            Self::Rms(norm) if fast_path(&[x, norm.weight()]) => {
                kernels::norm::rms_norm(x, norm.weight(), norm.eps())?
            }
            Self::Rms(norm) if tracked => {
                let eps = norm.eps() as f32;
                candle_nn::ops::rms_norm_slow(x, norm.weight(), eps)?
            }
            Self::Rms(norm) => norm.forward(x)?,
        })
    }
}
