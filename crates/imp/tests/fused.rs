//! The fused CPU kernels (attention, LayerNorm / RMSNorm, GELU) against candle's ops, which the
//! model ran before and still runs off the CPU, on random inputs of the models' shapes; and every
//! SIMD path this CPU runs against the scalar path.

use candle_core::{DType, Device, Tensor};
use imp::kernels::flash::{self, Heads, Visibility};
use imp::kernels::gelu::{gelu, gelu_erf, gelu_slice, Gelu};
use imp::kernels::host::fast_path;
use imp::kernels::norm::{layer_norm_slice, rms_norm_slice};
use imp::kernels::simd::Isa;
use imp::nn::attention::{attend, attend_candle};
use imp::nn::Norm;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn random(rng: &mut StdRng, n: usize, amplitude: f32) -> Vec<f32> {
    (0..n)
        .map(|_| rng.random_range(-amplitude..amplitude))
        .collect()
}

fn tensor(values: Vec<f32>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Largest `|a - b| / (1 + |b|)`: absolute near zero, relative for large values.
fn max_error(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / (1.0 + y.abs()))
        .fold(0.0, f32::max)
}

fn assert_close(what: &str, got: &[f32], want: &[f32], tolerance: f32) {
    let error = max_error(got, want);
    assert!(
        error <= tolerance,
        "{what}: error {error:e} above {tolerance:e}"
    );
}

/// The SIMD paths to check against [`Isa::Scalar`].
fn simd_paths() -> Vec<Isa> {
    Isa::available()
        .into_iter()
        .filter(|isa| *isa != Isa::Scalar)
        .collect()
}

// ---- GELU -------------------------------------------------------------------------------------

/// Lengths: one MLP row of SigLIP and of Phi-2, and one with a tail shorter than any vector.
const GELU_LENGTHS: [usize; 3] = [4304, 10240, 1003];

#[test]
fn gelu_matches_candle_in_f32() {
    let mut rng = StdRng::seed_from_u64(1);
    for n in GELU_LENGTHS {
        // Wide enough to reach both saturated ends.
        let x = tensor(random(&mut rng, 3 * n, 12.0), &[3, n]);
        assert_close(
            "gelu tanh",
            &values(&gelu(&x).unwrap()),
            &values(&x.gelu().unwrap()),
            2e-6,
        );
        assert_close(
            "gelu erf",
            &values(&gelu_erf(&x).unwrap()),
            &values(&x.gelu_erf().unwrap()),
            2e-6,
        );
    }
}

#[test]
fn gelu_in_half_precision_rounds_the_f32_result() {
    let mut rng = StdRng::seed_from_u64(2);
    let x = tensor(random(&mut rng, 2 * 4304, 6.0), &[2, 4304]);
    for dtype in [DType::F16, DType::BF16] {
        let x = x.to_dtype(dtype).unwrap();
        let wide = x.to_dtype(DType::F32).unwrap();
        // One rounding of the f32 result: half an ulp of the format, relative.
        let ulp = if dtype == DType::F16 { 1e-3 } else { 8e-3 };
        let want = wide.gelu().unwrap().to_dtype(dtype).unwrap();
        assert_close("gelu", &values(&gelu(&x).unwrap()), &values(&want), ulp);
        let want = wide.gelu_erf().unwrap().to_dtype(dtype).unwrap();
        assert_close(
            "gelu erf",
            &values(&gelu_erf(&x).unwrap()),
            &values(&want),
            ulp,
        );
    }
}

#[test]
fn gelu_simd_paths_match_scalar() {
    let mut rng = StdRng::seed_from_u64(3);
    for n in GELU_LENGTHS {
        let x = random(&mut rng, n, 12.0);
        for form in [Gelu::Tanh, Gelu::Erf] {
            let mut want = vec![0f32; n];
            gelu_slice(Isa::Scalar, form, &x, &mut want);
            for isa in simd_paths() {
                let mut got = vec![0f32; n];
                gelu_slice(isa, form, &x, &mut got);
                assert_close(&format!("{form:?} {isa:?}"), &got, &want, 1e-6);
            }
        }
    }
}

// ---- norms ------------------------------------------------------------------------------------

/// Widths: SigLIP, Phi-2, and one with a tail.
const NORM_WIDTHS: [usize; 3] = [1152, 2560, 1001];

#[test]
fn norms_match_candle() {
    let mut rng = StdRng::seed_from_u64(4);
    for width in NORM_WIDTHS {
        // An offset mean, as residual streams have.
        let x: Vec<f32> = random(&mut rng, 7 * width, 3.0)
            .into_iter()
            .map(|v| v + 2.0)
            .collect();
        let x = tensor(x, &[1, 7, width]);
        let weight = tensor(random(&mut rng, width, 2.0), &[width]);
        let bias = tensor(random(&mut rng, width, 1.0), &[width]);
        for eps in [1e-6, 1e-5] {
            let layer = Norm::layer(weight.clone(), bias.clone(), eps);
            let want = candle_nn::ops::layer_norm_slow(&x, &weight, &bias, eps as f32).unwrap();
            assert_close(
                "layer norm",
                &values(&layer.forward(&x).unwrap()),
                &values(&want),
                2e-6,
            );
            let rms = Norm::rms(weight.clone(), eps);
            let want = candle_nn::ops::rms_norm_slow(&x, &weight, eps as f32).unwrap();
            assert_close(
                "rms norm",
                &values(&rms.forward(&x).unwrap()),
                &values(&want),
                2e-6,
            );
        }
    }
}

#[test]
fn norms_in_half_precision_round_the_f32_result() {
    let mut rng = StdRng::seed_from_u64(5);
    let width = 2560;
    let x = tensor(random(&mut rng, 3 * width, 3.0), &[3, width]);
    let weight = tensor(random(&mut rng, width, 2.0), &[width]);
    let bias = tensor(random(&mut rng, width, 1.0), &[width]);
    for dtype in [DType::F16, DType::BF16] {
        let half = |t: &Tensor| t.to_dtype(dtype).unwrap();
        let wide = |t: &Tensor| half(t).to_dtype(DType::F32).unwrap();
        let ulp = if dtype == DType::F16 { 1e-3 } else { 8e-3 };
        let got = Norm::layer(half(&weight), half(&bias), 1e-5)
            .forward(&half(&x))
            .unwrap();
        let want =
            candle_nn::ops::layer_norm_slow(&wide(&x), &wide(&weight), &wide(&bias), 1e-5).unwrap();
        assert_close("layer norm", &values(&got), &values(&half(&want)), ulp);
        let got = Norm::rms(half(&weight), 1e-5).forward(&half(&x)).unwrap();
        let want = candle_nn::ops::rms_norm_slow(&wide(&x), &wide(&weight), 1e-5).unwrap();
        assert_close("rms norm", &values(&got), &values(&half(&want)), ulp);
    }
}

#[test]
fn norm_simd_paths_match_scalar() {
    let mut rng = StdRng::seed_from_u64(6);
    for width in NORM_WIDTHS {
        let x = random(&mut rng, 5 * width, 4.0);
        let weight = random(&mut rng, width, 2.0);
        let bias = random(&mut rng, width, 1.0);
        let mut want_layer = vec![0f32; x.len()];
        let mut want_rms = vec![0f32; x.len()];
        layer_norm_slice(Isa::Scalar, &x, &weight, &bias, 1e-6, &mut want_layer).unwrap();
        rms_norm_slice(Isa::Scalar, &x, &weight, 1e-6, &mut want_rms).unwrap();
        for isa in simd_paths() {
            let mut got = vec![0f32; x.len()];
            layer_norm_slice(isa, &x, &weight, &bias, 1e-6, &mut got).unwrap();
            // Sums of thousands of values in another order.
            assert_close(&format!("layer norm {isa:?}"), &got, &want_layer, 4e-6);
            rms_norm_slice(isa, &x, &weight, 1e-6, &mut got).unwrap();
            assert_close(&format!("rms norm {isa:?}"), &got, &want_rms, 4e-6);
        }
    }
}

#[test]
fn norm_rejects_rows_that_do_not_fit_the_weights() {
    let mut y = vec![0f32; 10];
    assert!(rms_norm_slice(Isa::best(), &[0f32; 10], &[1f32; 4], 1e-6, &mut y).is_err());
    assert!(layer_norm_slice(
        Isa::best(),
        &[0f32; 8],
        &[1f32; 4],
        &[0f32; 3],
        1e-6,
        &mut y[..8]
    )
    .is_err());
}

// ---- attention --------------------------------------------------------------------------------

/// One attention problem: query heads, key/value heads, new queries, cached tokens before them,
/// head dim, causal or not.
#[derive(Debug, Clone, Copy)]
struct Case {
    heads: usize,
    kv_heads: usize,
    queries: usize,
    past: usize,
    head_dim: usize,
    causal: bool,
}

impl Case {
    fn keys(&self) -> usize {
        self.past + self.queries
    }

    fn visibility(&self) -> Visibility {
        if self.causal {
            Visibility::Causal { past: self.past }
        } else {
            Visibility::All
        }
    }
}

const CASES: [Case; 8] = [
    // SigLIP: 16 heads of 72, every token sees every token.
    Case {
        heads: 16,
        kv_heads: 16,
        queries: 81,
        past: 0,
        head_dim: 72,
        causal: false,
    },
    Case {
        heads: 16,
        kv_heads: 16,
        queries: 5,
        past: 0,
        head_dim: 72,
        causal: false,
    },
    // Phi-2 prefill, a follow-up turn's prefill, and decode steps: 32 heads of 80.
    Case {
        heads: 32,
        kv_heads: 32,
        queries: 70,
        past: 0,
        head_dim: 80,
        causal: true,
    },
    Case {
        heads: 32,
        kv_heads: 32,
        queries: 37,
        past: 29,
        head_dim: 80,
        causal: true,
    },
    Case {
        heads: 32,
        kv_heads: 32,
        queries: 1,
        past: 130,
        head_dim: 80,
        causal: true,
    },
    Case {
        heads: 32,
        kv_heads: 32,
        queries: 3,
        past: 64,
        head_dim: 80,
        causal: true,
    },
    // Grouped key/value heads (4 query heads each), both schedules.
    Case {
        heads: 8,
        kv_heads: 2,
        queries: 45,
        past: 20,
        head_dim: 64,
        causal: true,
    },
    Case {
        heads: 8,
        kv_heads: 2,
        queries: 2,
        past: 20,
        head_dim: 64,
        causal: true,
    },
];

/// Random `q [1, heads, queries, d]` and, like the decoder's KV cache, keys and values as
/// narrowed views of longer buffers `[1, kv_heads, capacity, d]`. Scores are scaled up so that
/// some softmax rows are peaked.
fn operands(rng: &mut StdRng, case: &Case) -> (Tensor, Tensor, Tensor) {
    let d = case.head_dim;
    let capacity = case.keys() + 11;
    let q = tensor(
        random(rng, case.heads * case.queries * d, 3.0),
        &[1, case.heads, case.queries, d],
    );
    let cache = |rng: &mut StdRng| {
        tensor(
            random(rng, case.kv_heads * capacity * d, 1.5),
            &[1, case.kv_heads, capacity, d],
        )
        .narrow(2, 0, case.keys())
        .unwrap()
    };
    let k = cache(rng);
    let v = cache(rng);
    (q, k, v)
}

#[test]
fn attention_matches_candle() {
    let mut rng = StdRng::seed_from_u64(7);
    for case in CASES {
        let (q, k, v) = operands(&mut rng, &case);
        let past = case.causal.then_some(case.past);
        let got = attend(&q, &k, &v, past).unwrap();
        let want = attend_candle(&q, &k, &v, past).unwrap();
        assert_eq!(got.dims(), want.dims());
        assert_close(&format!("{case:?}"), &values(&got), &values(&want), 1e-5);
    }
}

#[test]
fn attention_takes_strided_views_without_a_batch() {
    // The vision tower's q, k and v: [heads, tokens, head_dim] views into one [tokens, 3, heads,
    // head_dim] projection.
    let mut rng = StdRng::seed_from_u64(8);
    let (tokens, heads, d) = (50, 16, 72);
    let qkv = tensor(
        random(&mut rng, tokens * 3 * heads * d, 2.0),
        &[tokens, 3, heads, d],
    );
    let split = |i: usize| {
        qkv.narrow(1, i, 1)
            .unwrap()
            .squeeze(1)
            .unwrap()
            .transpose(0, 1)
            .unwrap()
    };
    let (q, k, v) = (split(0), split(1), split(2));
    let got = attend(&q, &k, &v, None).unwrap();
    let want = attend_candle(&q, &k, &v, None).unwrap();
    assert_eq!(got.dims(), &[heads, tokens, d]);
    assert_close("vision views", &values(&got), &values(&want), 1e-5);
    // Merging the heads reads the output's storage in order.
    assert!(got.transpose(0, 1).unwrap().is_contiguous());
}

#[test]
fn attention_in_half_precision_matches_the_f32_reference() {
    let mut rng = StdRng::seed_from_u64(9);
    for case in [CASES[0], CASES[3], CASES[4]] {
        let (q, k, v) = operands(&mut rng, &case);
        let past = case.causal.then_some(case.past);
        for dtype in [DType::F16, DType::BF16] {
            let half = |t: &Tensor| t.to_dtype(dtype).unwrap();
            let wide = |t: &Tensor| half(t).to_dtype(DType::F32).unwrap();
            let got = attend(&half(&q), &half(&k), &half(&v), past).unwrap();
            assert_eq!(got.dtype(), dtype);
            let want = attend_candle(&wide(&q), &wide(&k), &wide(&v), past).unwrap();
            let ulp = if dtype == DType::F16 { 1e-3 } else { 8e-3 };
            assert_close(
                &format!("{case:?} {dtype:?}"),
                &values(&got),
                &values(&want),
                ulp,
            );
        }
    }
}

#[test]
fn attention_simd_paths_match_scalar() {
    let mut rng = StdRng::seed_from_u64(10);
    for case in CASES {
        let (q, k, v) = operands(&mut rng, &case);
        let (q, k, v) = (values(&q), values(&k), values(&v));
        let d = case.head_dim;
        let heads_q = Heads::contiguous(&q, case.heads, case.queries, d).unwrap();
        let heads_k = Heads::contiguous(&k, case.kv_heads, case.keys(), d).unwrap();
        let heads_v = Heads::contiguous(&v, case.kv_heads, case.keys(), d).unwrap();
        let run = |isa: Isa| {
            let mut out = vec![0f32; case.queries * case.heads * d];
            let scale = 1.0 / (d as f32).sqrt();
            flash::attention(
                isa,
                heads_q,
                heads_k,
                heads_v,
                scale,
                case.visibility(),
                &mut out,
            )
            .unwrap();
            out
        };
        let want = run(Isa::Scalar);
        for isa in simd_paths() {
            assert_close(&format!("{case:?} {isa:?}"), &run(isa), &want, 1e-5);
        }
    }
}

#[test]
fn attention_rejects_operands_that_do_not_fit() {
    let data = vec![0f32; 4 * 10 * 8];
    let q = Heads::contiguous(&data, 4, 10, 8).unwrap();
    let k = Heads::contiguous(&data, 3, 10, 8).unwrap();
    let mut out = vec![0f32; 4 * 10 * 8];
    // 4 query heads cannot share 3 key/value heads.
    assert!(flash::attention(Isa::best(), q, k, k, 1.0, Visibility::All, &mut out).is_err());
    // 10 queries after 5 cached tokens need 15 keys.
    let causal = Visibility::Causal { past: 5 };
    assert!(flash::attention(Isa::best(), q, q, q, 1.0, causal, &mut out).is_err());
    // A view past the end of its data.
    assert!(Heads::contiguous(&data, 4, 11, 8).is_none());
}

#[test]
fn tensors_that_track_gradients_keep_candles_ops() {
    let x = tensor(vec![1.0; 8], &[2, 4]);
    let var = candle_core::Var::from_tensor(&x).unwrap();
    assert!(fast_path(&[&x, &x]));
    assert!(!fast_path(&[&x, var.as_tensor()]));
    assert!(!fast_path(&[&x, &x.to_dtype(DType::F64).unwrap()]));
    assert!(!fast_path(&[&x, &x.to_dtype(DType::F16).unwrap()]));
}

/// CI names the paths its machine must detect (the aarch64 run under `qemu -cpu max` expects
/// NEON), so that a detection bug cannot quietly leave only the scalar path tested.
#[test]
fn expected_instruction_sets_are_detected() {
    let Ok(expected) = std::env::var("IMP_EXPECT_SIMD_ISA") else {
        return;
    };
    let available = Isa::available();
    for name in expected.split(',') {
        assert!(
            available.iter().any(|isa| format!("{isa:?}") == name),
            "{name} expected, detected {available:?}"
        );
    }
}
