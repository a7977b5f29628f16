//! The three parts of an Imp model, each a forward pass over immutable weights:
//! [`vision`] (SigLIP trunk) → [`projector`] (MLP into the language model's embedding space) →
//! [`decoder`] (Phi-2, Qwen2 or Phi-3). Their configs are in [`crate::config`]; the splice that
//! joins them is `ImpModel` (`model.rs`).

pub mod decoder;
pub mod projector;
pub mod vision;

pub use decoder::Decoder;
pub use projector::Projector;
pub use vision::{pool_patches, VisionTower};
