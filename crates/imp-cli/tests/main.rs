//! The `imp` command end to end, through the built binary: its answers against the reference
//! fixtures, `info`, quantization, `bench`, `serve`'s shutdown, and clear errors for bad input.

mod bad_input;
mod bench;
mod info;
mod quantize;
mod run;
mod serve;
mod support;
mod train;
