//! The training objective: next-token cross-entropy over the label positions of a spliced
//! sequence, as the reference's `CrossEntropyLoss(ignore_index=-100)` on shifted logits.
//! lm_head runs only on the rows that predict a label, which gives the same loss and
//! gradients without the `[tokens, vocab]` logits of every position.

use candle_core::{DType, Tensor, D};
use imp::ImpModel;

use crate::template::IGNORE_INDEX as IGNORE;
use crate::Result;

/// One sample as the model takes it.
#[derive(Debug, Clone)]
pub struct Example {
    /// Token ids with one image token where the image goes.
    pub ids: Vec<u32>,
    /// One label per id; [`IGNORE_INDEX`](crate::template::IGNORE_INDEX) where no loss is taken.
    pub labels: Vec<i64>,
    /// The preprocessed image `[1, 3, S, S]`, for an image sample.
    pub pixels: Option<Tensor>,
}

/// The labels of the spliced sequence: each image token's label stands for all its rows (the
/// reference masks them all), cut to `max_len` as the reference cuts after splicing.
pub fn spliced_labels(
    ids: &[u32],
    labels: &[i64],
    image_token: u32,
    image_rows: usize,
    max_len: usize,
) -> Vec<i64> {
    let mut spliced = Vec::with_capacity(labels.len() + image_rows);
    for (&id, &label) in ids.iter().zip(labels) {
        if id == image_token {
            spliced.extend(std::iter::repeat_n(IGNORE, image_rows));
        } else {
            spliced.push(label);
        }
    }
    spliced.truncate(max_len);
    spliced
}

/// Positions `t` whose next label counts, and those labels.
pub fn loss_targets(labels: &[i64]) -> (Vec<u32>, Vec<u32>) {
    labels
        .windows(2)
        .enumerate()
        .filter(|(_, pair)| pair[1] != IGNORE)
        .map(|(t, pair)| (t as u32, pair[1] as u32))
        .unzip()
}

/// An example spliced and ready for the decoder, with the rows that take a loss.
pub struct Prepared {
    /// `[tokens, hidden]`, tracking gradients into the projector.
    pub embeds: Tensor,
    positions: Tensor,
    targets: Tensor,
    /// Label tokens.
    pub tokens: usize,
}

/// The label tokens `example` contributes, known without running the model.
pub fn loss_tokens(model: &ImpModel, example: &Example, max_len: usize) -> usize {
    targets_of(model, example, max_len).0.len()
}

/// [`loss_targets`] of the example's spliced labels.
fn targets_of(model: &ImpModel, example: &Example, max_len: usize) -> (Vec<u32>, Vec<u32>) {
    let labels = spliced_labels(
        &example.ids,
        &example.labels,
        model.image_token_id(),
        model.image_tokens(),
        max_len,
    );
    loss_targets(&labels)
}

/// Runs the image through the (frozen) vision tower and the projector and splices it in;
/// `None` when no label counts.
pub fn prepare(model: &ImpModel, example: &Example, max_len: usize) -> Result<Option<Prepared>> {
    let (positions, targets) = targets_of(model, example, max_len);
    if positions.is_empty() {
        return Ok(None);
    }
    let images = match &example.pixels {
        Some(pixels) => vec![model.project(&model.vision_features(pixels)?)?],
        None => Vec::new(),
    };
    let embeds = model.splice(&example.ids, &images)?;
    let embeds = embeds.narrow(0, 0, embeds.dim(0)?.min(max_len))?;
    let limit = model.config().max_context;
    if embeds.dim(0)? > limit {
        return Err(imp::Error::ContextOverflow {
            needed: embeds.dim(0)?,
            limit,
        }
        .into());
    }
    let device = embeds.device();
    Ok(Some(Prepared {
        tokens: positions.len(),
        positions: Tensor::new(positions.as_slice(), device)?,
        targets: Tensor::new(targets.as_slice(), device)?.unsqueeze(1)?,
        embeds,
    }))
}

/// The summed token cross-entropy from the decoder's last hidden states (before the final
/// norm), a scalar that tracks gradients.
pub fn head_loss(model: &ImpModel, last_hidden: &Tensor, prepared: &Prepared) -> Result<Tensor> {
    let decoder = model.decoder();
    let hidden = decoder.final_norm(last_hidden)?;
    let rows = hidden.index_select(&prepared.positions, 0)?;
    let logits = decoder.logits(&rows)?.to_dtype(DType::F32)?;
    let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    Ok(log_probs.gather(&prepared.targets, 1)?.sum_all()?.neg()?)
}
