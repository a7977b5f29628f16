//! Fused attention against attention in candle's ops, on the models' shapes: SigLIP's, Phi-2's
//! prefill and decode with a KV cache, grouped key/value heads.

use candle_core::{DType, Tensor, D};
use imp_kernels::flash::{self, Heads, Visibility};
use imp_kernels::{kv, simd, Isa};
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::support::{
    assert_close, assert_paths_match_scalar, random, rounded, tensor, to, values, HALF_DTYPES,
};

/// The fused kernel on `[.., heads, tokens, head_dim]` operands, query `i` seeing every key
/// (`causal_past: None`) or the keys up to its position `past + i`.
fn fused(q: &Tensor, k: &Tensor, v: &Tensor, causal_past: Option<usize>) -> Tensor {
    let scale = 1.0 / (q.dim(D::Minus1).unwrap() as f32).sqrt();
    let visibility = match causal_past {
        Some(past) => Visibility::Causal { past },
        None => Visibility::All,
    };
    assert!([q, k, v].iter().all(|t| flash::supports(t)));
    flash::flash_attention(q, k, v, scale, visibility).unwrap()
}

/// [`fused`] in candle's ops, in f32, one query head at a time: `softmax(q·kᵀ/√d + mask)·v`
/// with the key/value head of its group, the result in `q`'s dtype.
fn candle_attention(q: &Tensor, k: &Tensor, v: &Tensor, causal_past: Option<usize>) -> Tensor {
    let head_axis = q.rank() - 3;
    let (heads, queries, head_dim) = (
        q.dims()[head_axis],
        q.dims()[head_axis + 1],
        q.dims()[head_axis + 2],
    );
    let (kv_heads, keys) = (k.dims()[head_axis], k.dims()[head_axis + 1]);
    let mask: Vec<f32> = (0..queries)
        .flat_map(|i| {
            (0..keys).map(move |j| match causal_past {
                Some(past) if j > past + i => f32::NEG_INFINITY,
                _ => 0.0,
            })
        })
        .collect();
    let mask = tensor(mask, &[queries, keys]);
    let head = |x: &Tensor, h: usize| {
        let x = x.narrow(head_axis, h, 1).unwrap().contiguous().unwrap();
        x.to_dtype(DType::F32).unwrap()
    };
    let outputs: Vec<Tensor> = (0..heads)
        .map(|h| {
            let kv = h / (heads / kv_heads);
            let scores = head(q, h).matmul(&head(k, kv).t().unwrap()).unwrap();
            let scores = (scores / (head_dim as f64).sqrt()).unwrap();
            let probs =
                candle_nn::ops::softmax_last_dim(&scores.broadcast_add(&mask).unwrap()).unwrap();
            probs.matmul(&head(v, kv)).unwrap()
        })
        .collect();
    let out = Tensor::cat(&outputs, head_axis).unwrap();
    out.to_dtype(q.dtype()).unwrap()
}

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
        let got = fused(&q, &k, &v, past);
        let want = candle_attention(&q, &k, &v, past);
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
    let got = fused(&q, &k, &v, None);
    let want = candle_attention(&q, &k, &v, None);
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
        for (dtype, ulp) in HALF_DTYPES {
            let half = |t| to(t, dtype);
            let wide = |t| rounded(t, dtype);
            let got = fused(&half(&q), &half(&k), &half(&v), past);
            assert_eq!(got.dtype(), dtype);
            let want = candle_attention(&wide(&q), &wide(&k), &wide(&v), past);
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
        paths_match_scalar("f32", &case, &q, &k, &v);
    }
}

#[test]
fn attention_rejects_operands_that_do_not_fit() {
    let data = vec![0f32; 4 * 10 * 8];
    let q = Heads::contiguous(&data, 4, 10, 8).unwrap();
    let k = Heads::contiguous(&data, 3, 10, 8).unwrap();
    let mut out = vec![0f32; 4 * 10 * 8];
    // 4 query heads cannot share 3 key/value heads.
    let isa = simd::best();
    assert!(flash::attention(isa, q, k, k, 1.0, Visibility::All, &mut out).is_err());
    // 10 queries after 5 cached tokens need 15 keys.
    let causal = Visibility::Causal { past: 5 };
    assert!(flash::attention(isa, q, q, q, 1.0, causal, &mut out).is_err());
    // A view past the end of its data.
    assert!(Heads::contiguous(&data, 4, 11, 8).is_none());
}

/// A cache format of keys and values for f32 queries: the operand the fused kernel reads, and
/// the f32 values it stands for (what candle's ops attend over in the reference).
fn cached(x: &Tensor, format: DType) -> (Tensor, Tensor) {
    match format {
        DType::U8 => {
            let rows = kv::quantize_q8(x).unwrap();
            let values = kv::dequantize_q8(&rows).unwrap();
            (rows, values)
        }
        _ => (to(x, format), rounded(x, format)),
    }
}

#[test]
fn attention_reads_narrower_caches_in_place() {
    let mut rng = StdRng::seed_from_u64(11);
    for case in CASES.into_iter().filter(|c| c.causal) {
        let (q, k, v) = operands(&mut rng, &case);
        let past = Some(case.past);
        for format in [DType::F16, DType::BF16, DType::U8] {
            let (k_stored, k_values) = cached(&k, format);
            let (v_stored, v_values) = cached(&v, format);
            let got = fused(&q, &k_stored, &v_stored, past);
            assert_eq!(got.dtype(), DType::F32);
            let want = candle_attention(&q, &k_values, &v_values, past);
            assert_close(
                &format!("{case:?} {format:?} cache"),
                &values(&got),
                &values(&want),
                1e-5,
            );
        }
    }
}

#[test]
fn q8_rows_round_each_value_to_its_rows_scale() {
    let mut rng = StdRng::seed_from_u64(12);
    let head_dim = 80;
    let mut x = random(&mut rng, 6 * head_dim, 4.0);
    // A row of zeros, and one with a single large outlier.
    x[head_dim..2 * head_dim].fill(0.0);
    x[2 * head_dim + 7] = 300.0;
    let rows = kv::quantize_q8(&tensor(x.clone(), &[6, head_dim])).unwrap();
    assert_eq!(rows.dims(), &[6, head_dim + kv::Q8_SCALE_BYTES]);
    let back = values(&kv::dequantize_q8(&rows).unwrap());
    for (row, (got, want)) in back.chunks(head_dim).zip(x.chunks(head_dim)).enumerate() {
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
        for (g, w) in got.iter().zip(want) {
            assert!(
                (g - w).abs() <= scale * 0.5 * (1.0 + 1e-6),
                "row {row}: {g} for {w} (scale {scale})"
            );
        }
    }
    assert!(back[head_dim..2 * head_dim].iter().all(|&v| v == 0.0));
}

/// Every SIMD path against the scalar one on keys and values stored as `C`.
fn paths_match_scalar<C: kv::CacheRow>(what: &str, case: &Case, q: &[f32], k: &[C], v: &[C]) {
    let d = case.head_dim;
    let heads_q = Heads::contiguous(q, case.heads, case.queries, d).unwrap();
    let heads_k = Heads::contiguous(k, case.kv_heads, case.keys(), d).unwrap();
    let heads_v = Heads::contiguous(v, case.kv_heads, case.keys(), d).unwrap();
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
    assert_paths_match_scalar(&format!("{case:?} {what}"), &simd::PATHS, 1e-5, run);
}

#[test]
fn cache_simd_paths_match_scalar() {
    let mut rng = StdRng::seed_from_u64(13);
    // The decode cases, and a head dimension that is no whole number of vectors.
    let odd = Case {
        heads: 4,
        kv_heads: 2,
        queries: 1,
        past: 70,
        head_dim: 20,
        causal: true,
    };
    for case in CASES.into_iter().filter(|c| c.causal).chain([odd]) {
        let (q, k, v) = operands(&mut rng, &case);
        let q = values(&q);
        let bytes = |x: &Tensor| {
            let rows = kv::quantize_q8(x).unwrap();
            rows.flatten_all().unwrap().to_vec1::<u8>().unwrap()
        };
        paths_match_scalar("q8", &case, &q, &bytes(&k), &bytes(&v));
        let halves = |x: &Tensor| {
            let x = x.contiguous().unwrap();
            (
                to(&x, DType::F16)
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<half::f16>()
                    .unwrap(),
                to(&x, DType::BF16)
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<half::bf16>()
                    .unwrap(),
            )
        };
        let ((k16, kb16), (v16, vb16)) = (halves(&k), halves(&v));
        paths_match_scalar("f16", &case, &q, &k16, &v16);
        paths_match_scalar("bf16", &case, &q, &kb16, &vb16);
    }
}
