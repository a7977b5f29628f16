//! The kernels against candle's ops, which the engine ran before and still runs off the CPU, on
//! random inputs of the models' shapes; and every SIMD path this CPU runs against the scalar
//! path of its kernel family.

mod attention;
mod gelu;
mod norm;
mod packed;
mod paths;
mod support;
