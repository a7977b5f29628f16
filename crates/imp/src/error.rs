//! The library's one error type. Every variant names the file, tensor or input at fault so that a
//! user can act on the message without reading the source.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The message includes the I/O error, which is therefore not also its `source`.
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
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

    /// A constraint on the answer that cannot be compiled, or that no token can continue.
    #[error("constraint: {0}")]
    Constraint(String),

    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    #[error(
        "the model computed non-finite logits (NaN or infinity): its weights hold NaN or \
         infinite values, or a value overflowed the compute dtype (try --dtype f32)"
    )]
    NonFiniteLogits,

    /// [`crate::GenerationOptions::cancel`] was set.
    #[error("generation cancelled")]
    Cancelled,

    #[error(transparent)]
    Candle(candle_core::Error),

    #[error(transparent)]
    Kernels(#[from] imp_kernels::Error),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            error: source,
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

impl From<candle_core::Error> for Error {
    fn from(error: candle_core::Error) -> Self {
        Self::Candle(without_backtrace(error))
    }
}

/// candle captures a backtrace into its errors when `RUST_BACKTRACE` is set and prints it with
/// the message; users get the message alone.
pub(crate) fn without_backtrace(error: candle_core::Error) -> candle_core::Error {
    use candle_core::Error as E;
    match error {
        E::WithBacktrace { inner, .. } => without_backtrace(*inner),
        E::Context { inner, context } => E::Context {
            inner: Box::new(without_backtrace(*inner)),
            context,
        },
        E::WithPath { inner, path } => E::WithPath {
            inner: Box::new(without_backtrace(*inner)),
            path,
        },
        other => other,
    }
}

/// Runs another crate's parser that panics on some malformed input instead of returning an
/// error (tokenizers' and candle's GGUF reader, found by fuzzing); the panic becomes a message.
pub(crate) fn parser_panic_as_error<T>(
    parse: impl FnOnce() -> T,
) -> std::result::Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(parse)).map_err(|payload| {
        let reason = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        format!("its parser gave up: {reason}")
    })
}
