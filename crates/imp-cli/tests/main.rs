//! The `imp` command end to end, through the built binary: its answers against the reference
//! fixtures, `info`, quantization, `bench`, and clear errors for bad input.

mod bad_input;
mod bench;
mod info;
mod quantize;
mod run;
mod support;
mod train;
