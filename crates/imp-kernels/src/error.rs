//! The kernels' one error type.

use crate::cpu::Isa;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Operands whose shapes or lengths do not fit the kernel or each other.
    #[error("{kernel}: {message}")]
    Operands {
        kernel: &'static str,
        message: String,
    },

    /// A path asked for that this CPU cannot run, or that the kernel family has no code for.
    #[error("the {kernels} kernels have no {isa:?} path this CPU runs")]
    NoPath { kernels: &'static str, isa: Isa },

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl Error {
    pub(crate) fn operands(kernel: &'static str, message: impl Into<String>) -> Self {
        Self::Operands {
            kernel,
            message: message.into(),
        }
    }
}
