//! The `mlp2x_gelu` projector: Linear -> GELU (exact erf form) -> Linear, mapping SigLIP
//! features into the language model's embedding space.

use candle_core::Tensor;
use imp_kernels::gelu::gelu_erf;

use crate::checkpoint::{NamingStyle, Weights};
use crate::linear::Linear;
use crate::Result;

#[derive(Debug, Clone, PartialEq)]
pub struct ProjectorConfig {
    /// SigLIP hidden size (`mm_hidden_size`).
    pub input_size: usize,
    /// The language model's hidden size.
    pub output_size: usize,
}

pub struct Projector {
    fc1: Linear,
    fc2: Linear,
}

impl Projector {
    pub fn load(weights: &Weights, style: NamingStyle, config: &ProjectorConfig) -> Result<Self> {
        let names = style.projector();
        Ok(Self {
            fc1: weights.linear(&names.fc1, config.output_size, config.input_size)?,
            fc2: weights.linear(&names.fc2, config.output_size, config.output_size)?,
        })
    }

    /// `[tokens, input_size] -> [tokens, output_size]`.
    pub fn forward(&self, features: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&gelu_erf(&self.fc1.forward(features)?)?)
    }
}
