//! The `mlp2x_gelu` projector: Linear -> GELU (exact erf form) -> Linear, mapping SigLIP
//! features into the language model's embedding space.

use candle_core::Tensor;

use crate::checkpoint::Weights;
use crate::config::ProjectorConfig;
use crate::names::NamingStyle;
use crate::nn::act::gelu_erf;
use crate::nn::Linear;
use crate::Result;

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
        let _span = tracing::trace_span!("projector").entered();
        self.fc2.forward(&gelu_erf(&self.fc1.forward(features)?)?)
    }
}
