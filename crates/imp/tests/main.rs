//! imp's tests, one binary: parity of every stage with the PyTorch reference on tiny models of
//! each released layout ([`parity`]), the visual-token budget ([`token_budget`]), preprocessing
//! against Pillow ([`preprocess`]), tokenizers against transformers and llama.cpp
//! ([`tokenizer`]), sampling against transformers' processors ([`sampler`]), quantization and
//! GGUF files ([`quant`]), session reuse ([`session_reuse`]), the Hugging Face cache ([`hub`]),
//! and clear errors for broken checkpoints and requests ([`bad_input`]).

mod support;

mod bad_input;
#[cfg(feature = "hub")]
mod hub;
mod parity;
mod preprocess;
mod quant;
mod sampler;
mod session_reuse;
mod token_budget;
mod tokenizer;
