//! The tools' error type. Like the engine's, every variant names the file, line or input at
//! fault; errors of the engine itself pass through unchanged.

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

    /// A complaint about one line of an input file (questions, answers, annotations).
    #[error("{}:{line}: {message}", path.display())]
    AtLine {
        path: PathBuf,
        line: usize,
        message: String,
    },

    #[error("image {source_name}: {message}")]
    Image {
        source_name: String,
        message: String,
    },

    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    #[error(transparent)]
    Imp(#[from] imp::Error),

    /// Tensor arithmetic of the quality report and the synthetic models.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            error: source,
        }
    }

    pub(crate) fn image(source_name: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Image {
            source_name: source_name.into(),
            message: message.into(),
        }
    }
}
