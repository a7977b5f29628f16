//! Matrix kernels of our own for weight formats whose candle CPU kernels are slow. Each format's
//! module repacks GGML blocks once into the layout its SIMD code streams fastest and keeps a
//! scalar reference that every SIMD path is tested against.

pub mod q4;

// Fused attention and element-wise kernels for inference on the CPU (vision tower, prefill),
// written once against a small SIMD trait and run on every core.
pub mod flash;
pub mod gelu;
pub mod host;
pub mod norm;
pub mod simd;
