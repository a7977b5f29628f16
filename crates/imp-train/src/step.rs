//! One optimizer step's gradients: micro-batches accumulated as the reference does (each
//! micro-batch's loss is the mean over its label tokens; the step's gradient is the mean over
//! its micro-batches). Samples go through the model one at a time, each backward pass done
//! before the next sample starts, so memory holds one sample's activations whatever the
//! micro-batch size, with the same loss and gradients as the padded batch.
//!
//! With [`Recompute::Layer`] even one sample's graph is not kept whole: the forward pass keeps
//! only each decoder layer's input, and the backward pass runs the layers again one at a time,
//! last first, handing each the gradient of its output (the vector-Jacobian product through
//! the surrogate `sum(output · gradient)`).
//!
//! Dropout masks are keyed by (step seed, sample, layer), so a layer recomputed for its
//! backward pass draws the masks its forward pass drew, and a resumed run draws the masks a
//! straight run would have.

use std::collections::HashMap;

use candle_core::{backprop::GradStore, Tensor, Var};
use imp::nn::dropout;
use imp::ImpModel;

use crate::loss::{head_loss, loss_tokens, prepare, Example, Prepared};
use crate::trainable::Trainables;
use crate::{Error, Result};

/// How much of the autograd graph a sample keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Recompute {
    /// The whole graph: fastest, activations of every layer at once.
    #[default]
    None,
    /// One layer's graph at a time: each layer runs twice.
    Layer,
}

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

/// The step's gradients; `dropout_seed` keys the step's dropout masks (see [`step_seed`]).
pub fn accumulate(
    model: &ImpModel,
    trainables: &Trainables,
    micro_batches: &[Vec<Example>],
    max_len: usize,
    recompute: Recompute,
    dropout_seed: u64,
) -> Result<Gradients> {
    let counts: Vec<usize> = micro_batches
        .iter()
        .map(|batch| batch.iter().map(|e| loss_tokens(model, e, max_len)).sum())
        .collect();
    let counted = counts.iter().filter(|&&n| n > 0).count();
    let mut grads: HashMap<String, Tensor> = HashMap::new();
    let mut loss = 0.0;
    let mut sample = 0;
    for (batch, &batch_tokens) in micro_batches.iter().zip(&counts) {
        if batch_tokens == 0 {
            continue;
        }
        let scale = 1.0 / (batch_tokens as f64 * counted as f64);
        for example in batch {
            let Some(prepared) = prepare(model, example, max_len)? else {
                continue;
            };
            let masks = Masks {
                seed: mix(dropout_seed, sample),
            };
            sample += 1;
            let sum = match recompute {
                Recompute::None => {
                    whole_graph(model, trainables, &prepared, scale, masks, &mut grads)?
                }
                Recompute::Layer => {
                    per_layer(model, trainables, &prepared, scale, masks, &mut grads)?
                }
            };
            loss += sum / batch_tokens as f64;
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
        tokens: counts.iter().sum(),
        empty_micro_batches: counts.len() - counted,
    })
}

/// The dropout seed of step `step` (0-based) of a run seeded with `seed`.
pub fn step_seed(seed: u64, step: usize) -> u64 {
    mix(seed, step as u64)
}

/// One sample's dropout masks: each layer (and the head, numbered after the last layer) draws
/// from its own seeded stream.
#[derive(Clone, Copy)]
struct Masks {
    seed: u64,
}

impl Masks {
    fn layer(self, index: usize) -> dropout::Seeded {
        dropout::seeded(mix(self.seed, index as u64))
    }
}

/// SplitMix64's finaliser over `seed` and `value`: well-spread seeds from small counters.
fn mix(seed: u64, value: u64) -> u64 {
    let mut z = seed ^ value.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Adds what `store` holds for the trainables to `grads`.
fn collect(
    store: &GradStore,
    trainables: &Trainables,
    grads: &mut HashMap<String, Tensor>,
) -> Result<()> {
    for param in &trainables.params {
        if let Some(grad) = store.get(param.var.as_tensor()) {
            let total = match grads.remove(&param.key) {
                Some(total) => (total + grad)?,
                None => grad.clone(),
            };
            grads.insert(param.key.clone(), total);
        }
    }
    Ok(())
}

/// The sample's summed loss; its gradients times `scale` added to `grads`.
fn whole_graph(
    model: &ImpModel,
    trainables: &Trainables,
    prepared: &Prepared,
    scale: f64,
    masks: Masks,
    grads: &mut HashMap<String, Tensor>,
) -> Result<f64> {
    let decoder = model.decoder();
    let layers = decoder.num_layers();
    let mut x = prepared.embeds.clone();
    for index in 0..layers {
        let _masks = masks.layer(index);
        x = decoder.forward_layer(index, &x)?;
    }
    let sum = {
        let _masks = masks.layer(layers);
        head_loss(model, &x, prepared)?
    };
    collect(&(&sum * scale)?.backward()?, trainables, grads)?;
    Ok(sum.to_scalar::<f32>()? as f64)
}

/// [`whole_graph`] keeping one layer's graph at a time.
fn per_layer(
    model: &ImpModel,
    trainables: &Trainables,
    prepared: &Prepared,
    scale: f64,
    masks: Masks,
    grads: &mut HashMap<String, Tensor>,
) -> Result<f64> {
    let decoder = model.decoder();
    let layers = decoder.num_layers();
    let mut inputs = Vec::with_capacity(layers + 1);
    inputs.push(prepared.embeds.detach());
    for index in 0..layers {
        let _masks = masks.layer(index);
        let output = decoder.forward_layer(index, &inputs[index])?.detach();
        inputs.push(output);
    }
    let last = Var::from_tensor(&inputs[layers])?;
    let sum = {
        let _masks = masks.layer(layers);
        head_loss(model, last.as_tensor(), prepared)?
    };
    let store = (&sum * scale)?.backward()?;
    collect(&store, trainables, grads)?;
    let mut upstream = input_grad(&store, &last)?;
    for index in (0..layers).rev() {
        let input = Var::from_tensor(&inputs[index])?;
        let output = {
            let _masks = masks.layer(index);
            decoder.forward_layer(index, input.as_tensor())?
        };
        let store = (output * &upstream)?.sum_all()?.backward()?;
        collect(&store, trainables, grads)?;
        upstream = input_grad(&store, &input)?;
    }
    // Into the projector through the splice.
    let store = (&prepared.embeds * &upstream)?.sum_all()?.backward()?;
    collect(&store, trainables, grads)?;
    Ok(sum.to_scalar::<f32>()? as f64)
}

fn input_grad(store: &GradStore, input: &Var) -> Result<Tensor> {
    match store.get(input.as_tensor()) {
        Some(grad) => Ok(grad.detach()),
        None => Err(Error::InvalidArgument(
            "recomputation found no gradient for a layer's input".into(),
        )),
    }
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
