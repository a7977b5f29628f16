//! What a run will need in memory, before anything is loaded: the frozen weights, the
//! trainables with their gradients and AdamW moments, and the activations the autograd graph
//! keeps for one sample (samples go through one at a time, so the micro-batch size does not
//! change it).
//!
//! The activation figure counts the tensors this implementation's graph holds per decoder
//! layer: about 24 hidden-sized rows per token (inputs of every linear and LoRA, the f32 norm
//! intermediates, residuals, rotary pieces), 4 MLP-sized rows, and 6 f32 `[heads, L, L]`
//! attention tensors (q·kᵀ, scaled, masked, and the composed softmax's exp, sum and quotient),
//! plus lm_head's f32 logits and log-softmax at the label positions; each dropout (LoRA's on
//! every adapted input, the residual one on attention and MLP outputs) adds its mask and its
//! output. It is an estimate from
//! the graph's shape, not a measurement. With layer-wise recomputation the graph holds every
//! layer's input and one layer's tensors at a time.

use candle_core::DType;
use imp::config::ImpConfig;
use imp::names::TensorShapes;
use serde::Serialize;

use crate::step::Recompute;
use crate::trainable::{lora_modules, LoraSpec};
use crate::Result;

#[derive(Debug, Clone, Serialize)]
pub struct MemoryEstimate {
    pub tokens: usize,
    pub frozen_bytes: usize,
    pub trainable_parameters: usize,
    /// Values, gradients, accumulated gradients and two AdamW moments, all f32.
    pub trainable_bytes: usize,
    pub activation_bytes: usize,
}

impl MemoryEstimate {
    pub fn total_bytes(&self) -> usize {
        self.frozen_bytes + self.trainable_bytes + self.activation_bytes
    }
}

/// For a run on `shapes`' model (with `recompute`, the activations are every layer's input plus
/// one layer's graph) in `dtype` whose longest sample has `tokens` rows (of which
/// `label_tokens` take a loss), training `lora` (none in stage 1) and the projector, with
/// `residual_dropout` on the blocks' outputs.
#[allow(clippy::too_many_arguments)]
pub fn estimate(
    shapes: &dyn TensorShapes,
    config: &ImpConfig,
    lora: Option<&LoraSpec>,
    dtype: DType,
    tokens: usize,
    label_tokens: usize,
    recompute: Recompute,
    residual_dropout: f64,
) -> Result<MemoryEstimate> {
    let mut stored = 0;
    let mut projector = 0;
    let projector_prefix = config.style.projector_prefix();
    for name in shapes.tensor_names() {
        let count: usize = shapes.shape(name)?.iter().product();
        if name.starts_with(&projector_prefix) {
            projector += count;
        } else {
            stored += count;
        }
    }
    let modules = match lora {
        Some(spec) => lora_modules(shapes, config.style, config.decoder.num_layers, spec)?,
        None => Vec::new(),
    };
    let r = lora.map_or(0, |spec| spec.r);
    let lora_parameters: usize = modules.iter().map(|m| r * (m.out + m.fan_in)).sum();
    // Dropped LoRA inputs per layer, in hidden-or-MLP-sized rows per token (lm_head's input
    // is only the label rows; it is left out).
    let lora_dropout_width: usize = match lora {
        Some(spec) if spec.dropout > 0.0 => {
            let layer_inputs: usize = modules
                .iter()
                .filter(|m| !m.name.ends_with("lm_head"))
                .map(|m| m.fan_in)
                .sum();
            layer_inputs / config.decoder.num_layers.max(1)
        }
        _ => 0,
    };
    let trainable = lora_parameters + projector;
    let size = dtype.size_in_bytes();
    let d = &config.decoder;
    let (l, h) = (tokens, d.hidden_size);
    let residual_dropout_width = if residual_dropout > 0.0 { 2 * h } else { 0 };
    let dropout = 2 * l * (lora_dropout_width + residual_dropout_width) * size;
    let per_layer = 24 * l * h * size
        + 4 * l * d.intermediate_size * size
        + 6 * d.num_heads * l * l * 4
        + dropout;
    let lm_head = 3 * label_tokens * d.vocab_size * 4;
    Ok(MemoryEstimate {
        tokens,
        frozen_bytes: stored * size,
        trainable_parameters: trainable,
        trainable_bytes: 5 * trainable * 4,
        activation_bytes: match recompute {
            Recompute::None => d.num_layers * per_layer,
            Recompute::Layer => (d.num_layers + 1) * l * h * size + per_layer,
        } + lm_head,
    })
}
