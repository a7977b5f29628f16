//! CPU kernels of the imp engine, for the weight formats and ops where a benchmark showed
//! candle's CPU code slow:
//!
//! - Block-format matrix products ([`PackedQ4_0`], [`PackedQ4K`], [`PackedQ8_0`], shared
//!   machinery in [`packed`]):
//!   one activation row through candle's `QMatMul` streamed the weights at 3.3-5.1 GiB/s on x86
//!   (Q4_0 is a vector-dot loop there); ours repack the GGML blocks once into 16-row tiles read
//!   front to back and stream 23-28 GiB/s, 78-95 % of the measured memory bandwidth, with several
//!   rows per weight load for prefill (128 rows: 23x candle for Q4_0, 1.3-1.4x for Q4_K).
//!   `benches/packed.rs` measures both; Q8_0 joined them for the same single copy of the
//!   weights.
//! - Fused attention ([`flash`]), LayerNorm / RMSNorm ([`norm`]) and GELU ([`gelu`]): candle
//!   materialises the attention scores, its fused LayerNorm subtracts the squared mean (losing
//!   digits) and its GELU calls libm's `tanhf` / `erff` one element at a time; ours run on every
//!   core with vectorised exponentials (vision attention 3.3-3.7x, prefill attention 7-10x, GELU
//!   85x faster than the candle ops they replace). Attention reads the KV cache in place in
//!   any of its formats ([`kv`]: f32, f16, bf16, q8 rows), widening in registers.
//!
//! Paths: [`CpuFeatures`] detects once which instruction sets ([`Isa`]) the CPU runs; each
//! kernel family lists the paths it has code for ([`packed::PATHS`], [`simd::PATHS`]) and takes
//! the fastest one the CPU runs, unless a caller names one (`matmul_with`, the `*_slice`
//! functions, [`flash::attention`]). Every family has a portable scalar path, the reference that
//! the tests run every other path this CPU (or qemu, for NEON) runs against.
//!
//! The tensor-level functions are candle ops with a CPU forward pass only, for CPU tensors of one
//! float dtype that track no gradients ([`host::fast_path`]); other devices and training keep
//! candle's ops: the choice is made by the caller, `imp::nn`, the one place that calls these
//! kernels.

mod act;
pub mod cpu;
mod error;
pub mod flash;
pub mod gelu;
pub mod host;
pub mod kv;
pub mod norm;
pub mod packed;
mod q4_0;
mod q4_k;
mod q8_0;
pub mod simd;

pub use cpu::{CpuFeatures, Isa};
pub use error::{Error, Result};
pub use packed::Packed;
pub use q4_0::{PackedQ4_0, Q4_0};
pub use q4_k::{PackedQ4K, Q4K};
pub use q8_0::{PackedQ8_0, Q8_0};
