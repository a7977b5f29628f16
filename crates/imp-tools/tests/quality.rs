//! The quantization quality report on a tiny model: exactly zero divergence for f32, and a
//! positive one for a 4-bit plan and for narrower KV caches.

use candle_core::quantized::GgmlDType;
use imp::quant::Quantization;
use imp::{KvCache, LoadOptions};
use imp_tools::quality::{quality_report, ReportInput};

use crate::support::{model_fixture, model_question};

#[test]
fn quality_report_is_zero_for_f32_and_positive_for_q4_0() {
    let name = "imp-v1.5-4b-phi3";
    let (image, question) = model_question(name);
    let input = ReportInput {
        images: vec![imp::load_rgb(&model_fixture(name).join(image)).unwrap()],
        questions: vec![question, "Describe the colours.".into()],
        max_new_tokens: 6,
    };
    let report = |plan, kv_cache| {
        let options = LoadOptions {
            kv_cache: Some(kv_cache),
            ..Default::default()
        };
        quality_report(&model_fixture(name), plan, &options, &input, &mut |_, _| {}).unwrap()
    };
    let exact = report(Quantization::all(GgmlDType::F32), KvCache::F32);
    assert_eq!(exact.samples, 2);
    assert_eq!(exact.variants.len(), 3);
    for v in &exact.variants {
        assert_eq!(
            (v.mean_kl, v.p99_kl, v.top1_agreement),
            (0.0, 0.0, 1.0),
            "{v:?}"
        );
    }
    let q4 = report(Quantization::all(GgmlDType::Q4_0), KvCache::F32);
    assert_eq!(q4.positions, exact.positions);
    for v in &q4.variants {
        assert!(v.mean_kl > 0.0 && v.p99_kl >= v.mean_kl, "{v:?}");
        assert!((0.0..=1.0).contains(&v.top1_agreement), "{v:?}");
    }
    // A cache alone is a report of its own; q8 loses more than f16.
    let cache_only = |kv_cache| {
        let report = report(Quantization::default(), kv_cache);
        assert_eq!(report.positions, exact.positions);
        let [v] = &report.variants[..] else {
            panic!("one variant for the cache alone: {:?}", report.variants)
        };
        assert_eq!(v.variant, "kv cache only");
        assert!(v.mean_kl > 0.0 && v.p99_kl >= v.mean_kl, "{v:?}");
        v.mean_kl
    };
    let (f16, q8) = (cache_only(KvCache::F16), cache_only(KvCache::Q8));
    assert!(f16 < q8, "f16 cache KL {f16}, q8 {q8}");
    let message = quality_report(
        &model_fixture(name),
        Quantization::default(),
        &LoadOptions {
            kv_cache: Some(KvCache::F32),
            ..Default::default()
        },
        &input,
        &mut |_, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(message.contains("--kv-cache"), "{message}");
}
