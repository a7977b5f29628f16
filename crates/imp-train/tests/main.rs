//! The crate's one test binary.

mod data;
mod masks;
mod merge;
mod reference_files;
mod run;
mod sampler;
mod schedule;
mod support;
mod train_parity;
