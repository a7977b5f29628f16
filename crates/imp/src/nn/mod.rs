//! The layers every model part is built from: linear layers and embeddings that hide the
//! weight format, normalisation, attention with rotary positions, and activations.
//!
//! This is the one seam where kernels plug in: each layer decides here whether our CPU kernels
//! (`imp-kernels`) may stand in for candle's ops on the tensors at hand, and falls back to
//! candle's differentiable ops otherwise (other devices, tensors tracked for gradients). No
//! other module calls a kernel.

pub mod act;
pub mod attention;
pub mod dropout;
mod linear;
pub mod lora;
mod norm;

pub use linear::{Embedding, Linear};
pub use lora::{Lora, LoraRows};
pub use norm::Norm;
