//! imp-tools: tools over the imp engine that an app embedding `imp` does not need: evaluation
//! ([`eval`], the Imp paper's benchmarks answered and scored the way the reference does it),
//! measurement ([`bandwidth`], the memory limit decoding is put against) and, later, synthetic
//! models. It uses `imp` only through its public API.

pub mod bandwidth;
pub mod error;
pub mod eval;

pub use error::{Error, Result};
