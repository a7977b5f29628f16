//! The library's one error type. Every variant names the file, tensor or input at fault so that a
//! user can act on the message without reading the source.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("config {}: {message}", path.display())]
    Config { path: PathBuf, message: String },

    #[error("checkpoint {}: {message}", path.display())]
    Checkpoint { path: PathBuf, message: String },

    #[error("tensor `{name}`: {message}")]
    Tensor { name: String, message: String },

    #[error("image {source_name}: {message}")]
    Image {
        source_name: String,
        message: String,
    },

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("prompt: {0}")]
    Prompt(String),

    #[error(
        "context too long: {needed} tokens (text plus image rows) exceed the model's limit of {limit}"
    )]
    ContextOverflow { needed: usize, limit: usize },

    #[error("model {name}: {message}")]
    ModelNotFound { name: String, message: String },

    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// [`crate::GenerationOptions::cancel`] was set.
    #[error("generation cancelled")]
    Cancelled,

    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    #[error(transparent)]
    Kernels(#[from] imp_kernels::Error),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn config(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Config {
            path: path.into(),
            message: message.into(),
        }
    }

    pub fn tensor(name: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Tensor {
            name: name.into(),
            message: message.into(),
        }
    }

    pub(crate) fn image(source_name: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Image {
            source_name: source_name.into(),
            message: message.into(),
        }
    }
}
