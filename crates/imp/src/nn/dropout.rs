//! Training-mode dropout whose masks can be replayed.
//!
//! candle's `ops::dropout` draws from an unseeded per-thread generator: a run could not be
//! repeated from its seed, a resumed run would not equal a straight one, and a layer that is
//! recomputed for its backward pass would see other masks than its forward pass saw. Here the
//! masks come from a generator the caller seeds for a stretch of work with [`seeded`]; the
//! trainer keys it by (seed, step, sample, layer), so a layer draws the same masks however
//! often it runs. Outside such a stretch, masks come from the thread's entropy.

use std::cell::RefCell;

use candle_core::Tensor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::Result;

thread_local! {
    static MASKS: RefCell<Option<StdRng>> = const { RefCell::new(None) };
}

/// While alive, this thread's dropout masks come from a generator seeded with `seed`; the
/// previous generator comes back when it drops.
#[must_use = "the seed holds only while the guard lives"]
pub struct Seeded {
    previous: Option<StdRng>,
}

pub fn seeded(seed: u64) -> Seeded {
    let previous = MASKS.with(|masks| masks.replace(Some(StdRng::seed_from_u64(seed))));
    Seeded { previous }
}

impl Drop for Seeded {
    fn drop(&mut self) {
        MASKS.with(|masks| *masks.borrow_mut() = self.previous.take());
    }
}

/// Zeroes each element of `x` with probability `rate` and scales the rest by `1 / (1 - rate)`,
/// as `torch.nn.Dropout` in training mode. Differentiable in `x`.
pub fn dropout(x: &Tensor, rate: f32) -> Result<Tensor> {
    if rate <= 0.0 {
        return Ok(x.clone());
    }
    let scale = 1.0 / (1.0 - rate);
    let count = x.elem_count();
    let draw = |rng: &mut dyn rand::RngCore| -> Vec<f32> {
        (0..count)
            .map(|_| {
                if rng.random::<f32>() < rate {
                    0.0
                } else {
                    scale
                }
            })
            .collect()
    };
    let mask = MASKS.with(|masks| match masks.borrow_mut().as_mut() {
        Some(rng) => draw(rng),
        None => draw(&mut rand::rng()),
    });
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    Ok((x * mask)?)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::{dropout, seeded};

    #[test]
    fn a_seeded_stretch_replays_its_masks_and_keeps_the_expectation() {
        let x = Tensor::ones((64, 64), candle_core::DType::F32, &Device::Cpu).unwrap();
        let draw = |seed| {
            let _masks = seeded(seed);
            dropout(&x, 0.25)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let first = draw(7);
        assert_eq!(first, draw(7));
        assert_ne!(first, draw(8));
        let zeros = first.iter().filter(|&&v| v == 0.0).count() as f64 / first.len() as f64;
        assert!((zeros - 0.25).abs() < 0.03, "dropped fraction {zeros}");
        assert!(first
            .iter()
            .all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
        let mean = first.iter().sum::<f32>() / first.len() as f32;
        assert!((mean - 1.0).abs() < 0.05, "mean {mean}");
    }
}
