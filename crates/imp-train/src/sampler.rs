//! The order samples are trained in, per epoch, from the seed: a plain shuffle, or the
//! reference's modality-grouped order (`--group_by_modality_length`), where each optimizer
//! step holds only image samples or only text samples, longest first, and the two modalities'
//! leftovers share one last step.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// A sample's modality and length for grouping: the whitespace-separated words of its turns,
/// positive with an image, negative without (as the reference's `modality_lengths`).
pub fn modality_length(sample: &crate::data::Sample) -> i64 {
    let words: usize = sample
        .conversations
        .iter()
        .map(|turn| turn.value.split_whitespace().count())
        .sum();
    let words = words.max(1) as i64;
    if sample.has_image() {
        words
    } else {
        -words
    }
}

/// One epoch's order. `lengths` (from [`modality_length`]) groups by modality into megabatches
/// of `megabatch` samples (one optimizer step's worth); `None` shuffles plainly.
pub fn epoch_order(
    samples: usize,
    lengths: Option<&[i64]>,
    megabatch: usize,
    rng: &mut StdRng,
) -> Vec<usize> {
    let Some(lengths) = lengths else {
        let mut order: Vec<usize> = (0..samples).collect();
        order.shuffle(rng);
        return order;
    };
    let (images, texts): (Vec<usize>, Vec<usize>) = (0..samples).partition(|&i| lengths[i] > 0);
    let by_length = |mut group: Vec<usize>, rng: &mut StdRng| -> Vec<Vec<usize>> {
        group.shuffle(rng);
        group
            .chunks(megabatch)
            .map(|chunk| {
                let mut chunk = chunk.to_vec();
                chunk.sort_by_key(|&i| std::cmp::Reverse(lengths[i].abs()));
                chunk
            })
            .collect()
    };
    if images.is_empty() || texts.is_empty() {
        return by_length((0..samples).collect(), rng).concat();
    }
    let mut image_batches = by_length(images, rng);
    let mut text_batches = by_length(texts, rng);
    let mut leftover = image_batches.pop().unwrap_or_default();
    leftover.extend(text_batches.pop().unwrap_or_default());
    let mut megabatches: Vec<Vec<usize>> = image_batches.into_iter().chain(text_batches).collect();
    megabatches.shuffle(rng);
    leftover.sort_unstable();
    megabatches.push(leftover);
    megabatches.concat()
}

/// The samples of each step over `epochs`: each epoch's order cut into micro-batches,
/// `accumulation` of them per step (an epoch's last step takes what is left).
pub fn step_plan(
    samples: usize,
    lengths: Option<&[i64]>,
    epochs: usize,
    micro_batch: usize,
    accumulation: usize,
    seed: u64,
) -> Vec<Vec<Vec<usize>>> {
    let mut steps = Vec::new();
    for epoch in 0..epochs {
        let mut rng = StdRng::seed_from_u64(seed.wrapping_add(epoch as u64));
        let order = epoch_order(samples, lengths, micro_batch * accumulation, &mut rng);
        let micro: Vec<Vec<usize>> = order.chunks(micro_batch).map(<[usize]>::to_vec).collect();
        steps.extend(micro.chunks(accumulation).map(<[Vec<usize>]>::to_vec));
    }
    steps
}
