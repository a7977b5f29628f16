//! Our block-format kernels (Q4_0, Q4_K, Q8_0) against candle's `QMatMul` on the Phi-2 matrix
//! shapes, for one activation row (decode; throughput in weight bytes streamed per second) and
//! 128 rows (prefill), and a memory-bandwidth reference: summing a 1 GiB buffer on the same
//! threads. Each iteration takes the next of several copies of the matrix, together far larger
//! than the last-level cache, so the weights come from memory as in a whole model.
//!
//! `RAYON_NUM_THREADS=2 cargo bench -p imp-kernels --bench packed`

use std::hint::black_box;
use std::time::Duration;

use candle_core::quantized::{ggml_file, GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use imp_kernels::packed::{Packed, PackedFormat};
use imp_kernels::{Q4K, Q4_0, Q8_0};
use rayon::prelude::*;

/// Phi-2's matrices `(out, in)`: MLP up, MLP down, fused QKV.
const SHAPES: [(usize, usize); 3] = [(10240, 2560), (2560, 10240), (7680, 2560)];

/// Bytes of weight copies to cycle through, well above any last-level cache.
const WORKING_SET: usize = 512 << 20;

/// Eight independent lanes, which the compiler turns into vector adds, so that the loop is
/// bound by the loads.
fn sum_words(words: &[u64]) -> u64 {
    let mut lanes = [0u64; 8];
    for block in words.chunks_exact(8) {
        for (lane, &w) in lanes.iter_mut().zip(block) {
            *lane = lane.wrapping_add(w);
        }
    }
    lanes.iter().fold(0, |a, &l| a.wrapping_add(l))
}

fn bandwidth(c: &mut Criterion) {
    let words = vec![1u64; (1 << 30) / 8];
    let mut group = c.benchmark_group("bandwidth");
    group.throughput(Throughput::Bytes(1 << 30));
    group.sample_size(20);
    let threads = candle_core::utils::get_num_threads();
    group.bench_function(format!("sum-1GiB/{threads}-threads"), |b| {
        b.iter(|| {
            let chunk = words.len() / threads;
            let sum: u64 = words.par_chunks(chunk).map(sum_words).sum();
            black_box(sum)
        })
    });
    group.finish();
}

/// candle's `QMatMul` and ours on the GGML bytes of `format`, for every shape and row count.
fn compare<F: PackedFormat>(c: &mut Criterion, format: GgmlDType, name: &str) {
    let device = Device::Cpu;
    for (out, width) in SHAPES {
        let weight = Tensor::randn(0f32, 1.0, (out, width), &device).unwrap();
        let blocks = QTensor::quantize(&weight, format).unwrap();
        let data = blocks.data().unwrap();
        let copies = WORKING_SET.div_ceil(data.len());
        let ours: Vec<Packed<F>> = (0..copies)
            .map(|_| Packed::from_ggml(&data, out, width).unwrap())
            .collect();
        let candle: Vec<QMatMul> = (0..copies)
            .map(|_| {
                let copy =
                    ggml_file::qtensor_from_ggml(format, &data, vec![out, width], &device).unwrap();
                QMatMul::from_qtensor(copy).unwrap()
            })
            .collect();
        // GGML bytes: the same for both, though our Q4_K layout streams 2.8% more.
        let bytes = data.len() as u64;
        let mut group = c.benchmark_group(format!("{name}/{out}x{width}"));
        group.sample_size(10);
        group.warm_up_time(Duration::from_secs(1));
        for m in [1, 128] {
            if m == 1 {
                group.throughput(Throughput::Bytes(bytes));
            } else {
                group.throughput(Throughput::Elements((m * out * width) as u64));
            }
            let x = Tensor::randn(0f32, 1.0, (m, width), &device).unwrap();
            let mut next = (0..copies).cycle();
            group.bench_with_input(BenchmarkId::new("candle", m), &x, |b, x| {
                b.iter(|| black_box(candle[next.next().unwrap()].forward(x).unwrap()))
            });
            let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let mut y = vec![0f32; m * out];
            group.bench_with_input(BenchmarkId::new("imp", m), &xs, |b, xs| {
                b.iter(|| ours[next.next().unwrap()].matmul(xs, &mut y).unwrap())
            });
        }
        group.finish();
    }
}

fn q4_0(c: &mut Criterion) {
    compare::<Q4_0>(c, GgmlDType::Q4_0, "q4_0");
}

fn q4_k(c: &mut Criterion) {
    compare::<Q4K>(c, GgmlDType::Q4K, "q4_k");
}

fn q8_0(c: &mut Criterion) {
    compare::<Q8_0>(c, GgmlDType::Q8_0, "q8_0");
}

criterion_group!(benches, bandwidth, q4_0, q4_k, q8_0);
criterion_main!(benches);
