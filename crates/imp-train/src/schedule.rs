//! Learning-rate schedules as transformers' `get_scheduler` computes them: a linear warmup
//! from 0, then cosine or linear decay to 0, or constant. Like PyTorch's `LambdaLR`, optimizer
//! step `s` (from 0) runs at `lr · multiplier(s)`, so with warmup the first step has lr 0.

use std::f64::consts::PI;
use std::fmt;
use std::str::FromStr;

use crate::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheduler {
    Cosine,
    Linear,
    /// Constant after the warmup (transformers' `constant_with_warmup`).
    Constant,
}

impl FromStr for Scheduler {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "cosine" => Ok(Self::Cosine),
            "linear" => Ok(Self::Linear),
            "constant" => Ok(Self::Constant),
            other => Err(Error::InvalidArgument(format!(
                "unknown scheduler `{other}`: expected cosine, linear or constant"
            ))),
        }
    }
}

impl fmt::Display for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Cosine => "cosine",
            Self::Linear => "linear",
            Self::Constant => "constant",
        })
    }
}

/// Warmup steps for a ratio of the total, rounded up as `TrainingArguments.get_warmup_steps`.
pub fn warmup_steps(total: usize, ratio: f64) -> usize {
    (total as f64 * ratio).ceil() as usize
}

impl Scheduler {
    /// The factor on the base learning rate at optimizer step `step` of `total`.
    pub fn multiplier(self, step: usize, warmup: usize, total: usize) -> f64 {
        if step < warmup {
            return step as f64 / warmup.max(1) as f64;
        }
        let decay_steps = total.saturating_sub(warmup).max(1) as f64;
        match self {
            Self::Constant => 1.0,
            Self::Linear => (total as f64 - step as f64).max(0.0) / decay_steps,
            Self::Cosine => {
                let progress = (step - warmup) as f64 / decay_steps;
                (0.5 * (1.0 + (PI * progress).cos())).max(0.0)
            }
        }
    }
}
