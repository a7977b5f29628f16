//! Normalisation layers: LayerNorm (SigLIP, Phi-2) and RMSNorm (Qwen2, Phi-3).

use candle_core::{Module, Tensor};

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

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::Layer(norm) => norm.forward(x)?,
            Self::Rms(norm) => norm.forward(x)?,
        })
    }
}
