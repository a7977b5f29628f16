//! imp's tests, one binary: parity of every stage with the PyTorch reference on tiny models of
//! each released layout ([`parity`]), the visual-token budget ([`token_budget`]), preprocessing
//! against Pillow ([`preprocess`]), tokenizers against transformers and llama.cpp
//! ([`tokenizer`]), sampling against transformers' processors ([`sampler`]), quantization and
//! GGUF files ([`quant`]), 4-bit `Linear` layers against candle ([`linear`]), attention and
//! rotary embeddings ([`attention`]), OpenAI-shaped chat messages ([`messages`]), session reuse
//! ([`session_reuse`]), answers within JSON schemas, regexes and grammars ([`constrained`]), the Hugging Face cache
//! ([`hub`]), and clear errors for broken checkpoints and requests ([`bad_input`]). The kernels
//! themselves are tested in `imp-kernels`.

mod support;

mod attention;
mod bad_input;
mod constrained;
mod hub;
mod linear;
mod messages;
mod parity;
mod preprocess;
mod quant;
mod sampler;
mod session_reuse;
mod token_budget;
mod tokenizer;
