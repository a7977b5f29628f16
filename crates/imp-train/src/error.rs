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

    /// Training data that cannot be used, with the file and, where known, the sample at fault.
    #[error("{}: {message}", path.display())]
    Data { path: PathBuf, message: String },

    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    #[error(transparent)]
    Imp(#[from] imp::Error),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}
