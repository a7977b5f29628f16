//! imp: run the Imp family of small multimodal models (MILVLG, arXiv 2405.12107) on CPUs.
//!
//! The data path is visible in the module layout:
//! image → [`preprocess`] → [`vision`] (SigLIP trunk) → [`projector`] → splice into the token
//! embeddings ([`model`]) → [`llm`] decoder with a per-conversation [`session`] → [`sampler`] →
//! text ([`generate`]). [`checkpoint`] reads Hugging Face folders and is the one place that knows
//! each checkpoint style's tensor names; [`config`] turns `config.json` into typed configs.

pub mod attention;
pub mod bandwidth;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod eval;
pub mod generate;
pub mod hub;
pub mod linear;
pub mod llm;
pub mod model;
pub mod norm;
pub mod preprocess;
pub mod projector;
pub mod quant;
pub mod sampler;
pub mod session;
pub mod synthetic;
pub mod template;
pub mod tokenizer;
pub mod vision;

pub use error::{Error, Result};
pub use generate::{
    generate, generate_in, generate_prepared, FinishReason, Generation, GenerationOptions,
    PreparedPrompt, Timings,
};
pub use model::{ImpModel, LoadOptions, ModelInfo};
pub use sampler::SamplingParams;
pub use session::{ImageId, Position, Session};
pub use template::{Prompt, Turn};
