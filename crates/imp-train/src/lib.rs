//! Fine-tuning Imp models: the paper's two stages as MILVLG/imp runs them.
//!
//! Data path: LLaVA JSON ([`data`]) → conversation template and label mask ([`template`]) →
//! images preprocessed ahead of the step ([`run`]) → `imp`'s model with the [`trainable`]
//! LoRA pairs and projector → masked cross-entropy ([`loss`]) → gradients accumulated over
//! micro-batches ([`step`]) → AdamW ([`optim`]) at the [`schedule`]'s learning rate.

pub mod data;
mod error;
pub mod export;
pub mod loss;
pub mod memory;
pub mod merge;
pub mod optim;
pub mod plot;
pub mod run;
pub mod sampler;
pub mod schedule;
pub mod step;
pub mod template;
pub mod trainable;

pub use error::{Error, Result};
