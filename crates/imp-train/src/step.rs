//! One optimizer step's gradients: micro-batches accumulated as the reference does (each
//! micro-batch's loss is the mean over its label tokens; the step's gradient is the mean over
//! its micro-batches). Samples go through the model one at a time, so memory holds one
//! sample's activations whatever the micro-batch size, with the same loss and gradients as
//! the padded batch.

use std::collections::HashMap;

use candle_core::Tensor;
use imp::ImpModel;

use crate::loss::{example_loss, Example};
use crate::trainable::Trainables;
use crate::Result;

/// What one step computed.
#[derive(Debug)]
pub struct Gradients {
    /// By trainable key; zero for a parameter this step did not reach.
    pub grads: HashMap<String, Tensor>,
    /// Mean of the micro-batches' mean token losses.
    pub loss: f64,
    /// Label tokens the loss covered.
    pub tokens: usize,
    /// Micro-batches with no label token (every sample dropped): skipped.
    pub empty_micro_batches: usize,
}

pub fn accumulate(
    model: &ImpModel,
    trainables: &Trainables,
    micro_batches: &[Vec<Example>],
    max_len: usize,
) -> Result<Gradients> {
    let mut grads: HashMap<String, Tensor> = HashMap::new();
    let mut loss = 0.0;
    let mut tokens = 0;
    let mut counted = 0;
    let mut empty = 0;
    // Losses first, so each micro-batch's token count is known before its backward passes.
    let mut per_batch = Vec::with_capacity(micro_batches.len());
    for batch in micro_batches {
        let mut losses = Vec::new();
        let mut batch_tokens = 0;
        for example in batch {
            if let Some((sum, n)) = example_loss(model, example, max_len)? {
                batch_tokens += n;
                losses.push(sum);
            }
        }
        if batch_tokens == 0 {
            empty += 1;
        } else {
            counted += 1;
        }
        per_batch.push((losses, batch_tokens));
    }
    for (losses, batch_tokens) in per_batch {
        if batch_tokens == 0 {
            continue;
        }
        tokens += batch_tokens;
        let scale = 1.0 / (batch_tokens as f64 * counted as f64);
        for sum in losses {
            loss += sum.to_scalar::<f32>()? as f64 / batch_tokens as f64;
            let store = (sum * scale)?.backward()?;
            for param in &trainables.params {
                if let Some(grad) = store.get(param.var.as_tensor()) {
                    let total = match grads.remove(&param.key) {
                        Some(total) => (total + grad)?,
                        None => grad.clone(),
                    };
                    grads.insert(param.key.clone(), total);
                }
            }
        }
    }
    for param in &trainables.params {
        if !grads.contains_key(&param.key) {
            grads.insert(param.key.clone(), param.var.zeros_like()?);
        }
    }
    Ok(Gradients {
        grads,
        loss: if counted == 0 {
            0.0
        } else {
            loss / counted as f64
        },
        tokens,
        empty_micro_batches: empty,
    })
}

/// The gradients' global L2 norm, and the factor `clip_grad_norm_` scales them by to bring it
/// to `max_norm` (1 when under it, or when clipping is off with `max_norm <= 0`).
pub fn clip_factor(grads: &HashMap<String, Tensor>, max_norm: f64) -> Result<(f64, f64)> {
    let mut squares = 0.0;
    for grad in grads.values() {
        squares += grad
            .to_dtype(candle_core::DType::F32)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f32>()? as f64;
    }
    let norm = squares.sqrt();
    let factor = if max_norm > 0.0 {
        (max_norm / (norm + 1e-6)).min(1.0)
    } else {
        1.0
    };
    Ok((norm, factor))
}
