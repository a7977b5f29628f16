//! Decode attention over a KV cache in each format: one query token of Phi-2 (32 heads of 80)
//! against the 792 keys of a 384 px image prompt, per layer. Each iteration reads the next of
//! several layers' caches, together larger than the last-level cache, as a whole model does;
//! throughput is the cache bytes read.
//!
//! `RAYON_NUM_THREADS=2 cargo bench -p imp-kernels --bench attention`

use std::hint::black_box;
use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use imp_kernels::flash::{flash_attention, Visibility};
use imp_kernels::kv;

const HEADS: usize = 32;
const HEAD_DIM: usize = 80;
const KEYS: usize = 792;
/// Layers' caches to cycle through: 32 f32 layers are 520 MB.
const LAYERS: usize = 32;

fn decode(c: &mut Criterion) {
    let device = Device::Cpu;
    let q = Tensor::randn(0f32, 1.0, (1, HEADS, 1, HEAD_DIM), &device).unwrap();
    let mut group = c.benchmark_group("decode attention, 792 keys");
    group.measurement_time(Duration::from_secs(4));
    for format in ["f32", "f16", "bf16", "q8"] {
        let layers: Vec<(Tensor, Tensor)> = (0..LAYERS)
            .map(|_| {
                let x = || Tensor::randn(0f32, 1.0, (1, HEADS, KEYS, HEAD_DIM), &device).unwrap();
                let store = |x: Tensor| match format {
                    "f32" => x,
                    "f16" => x.to_dtype(DType::F16).unwrap(),
                    "bf16" => x.to_dtype(DType::BF16).unwrap(),
                    _ => kv::quantize_q8(&x).unwrap(),
                };
                (store(x()), store(x()))
            })
            .collect();
        let bytes = 2 * layers[0].0.elem_count() * layers[0].0.dtype().size_in_bytes();
        group.throughput(Throughput::Bytes(bytes as u64));
        let mut next = 0;
        group.bench_function(format, |b| {
            b.iter(|| {
                let (k, v) = &layers[next % LAYERS];
                next += 1;
                let visibility = Visibility::Causal { past: KEYS - 1 };
                black_box(flash_attention(&q, k, v, 0.1, visibility).unwrap())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
