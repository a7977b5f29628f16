//! imp-tools: tools over the imp engine that an app embedding `imp` does not need: evaluation
//! ([`eval`], the Imp paper's benchmarks answered and scored the way the reference does it;
//! [`quality`], what a quantization plan costs against the f32 model), measurement
//! ([`bandwidth`], the memory limit decoding is put against) and [`synthetic`] models (random
//! weights with a release's shapes, on disk or drawn in memory as a `TensorSource`). It uses
//! `imp` only through its public API.

pub mod bandwidth;
pub mod error;
pub mod eval;
pub mod quality;
pub mod synthetic;

pub use error::{Error, Result};
