//! imp: run the Imp family of small multimodal models (MILVLG, arXiv 2405.12107) on CPUs.
//!
//! The data path is visible in the module layout:
//! image → [`preprocess`] → [`models::vision`] (SigLIP trunk) → [`models::projector`] → splice
//! into the token embeddings ([`ImpModel`]) → [`models::decoder`] with a per-conversation
//! [`Session`] → [`sampler`] (within a [`constraint`], if one is given) → text ([`generate()`]).
//!
//! Weights come from a [`checkpoint::TensorSource`] (a Hugging Face folder, a GGUF file written
//! by [`quantize::write_gguf`], or a source of your own) and are built into the layers of [`nn`],
//! the one place where CPU kernels plug in. [`names`] is the one place that knows each checkpoint
//! style's tensor names; [`config`] turns the configuration files into typed configs.
//!
//! ```no_run
//! use imp::{generate, load_rgb, GenerationOptions, ImpModel, LoadOptions, Prompt};
//!
//! let model = ImpModel::load("Imp-v1.5-3B-196".as_ref(), &LoadOptions::default())?;
//! let image = load_rgb("photo.jpg".as_ref())?;
//! let prompt = Prompt::from_cli("What is on the table?");
//! let answer = generate(&model, &prompt, &[image], &GenerationOptions::default(), &mut |_| {})?;
//! println!("{}", answer.text);
//! # Ok::<(), imp::Error>(())
//! ```

pub mod adapter;
pub mod checkpoint;
pub mod config;
pub mod constraint;
mod conversation;
mod error;
pub mod files;
mod generate;
pub mod hub;
pub mod messages;
mod model;
pub mod models;
pub mod names;
pub mod nn;
pub mod preprocess;
pub mod quant;
pub mod quantize;
pub mod sampler;
mod session;
pub mod template;
pub mod tokenizer;

pub use constraint::{Constraint, Grammar};
pub use conversation::Conversation;
pub use error::{Error, Result};
pub use generate::{
    encode_images, generate, generate_in, generate_prepared, FinishReason, Generation,
    GenerationOptions, PreparedPrompt, Timings,
};
pub use model::{dtype_from_name, ImpModel, LoadOptions, ModelInfo};
pub use preprocess::{decode_rgb, load_rgb, rgb_from_rows};
pub use sampler::SamplingParams;
pub use session::{ImageId, KvCache, Position, Session};
pub use template::{Prompt, Turn};
