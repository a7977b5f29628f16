//! The crate's one test binary.

mod data;
mod masks;
mod merge;
mod run;
mod schedule;
mod support;
mod train_parity;
