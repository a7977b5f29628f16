//! The quantization quality report on a tiny model: exactly zero divergence for f32, and a
//! positive one for a 4-bit plan.

use candle_core::quantized::GgmlDType;
use imp::quant::Quantization;
use imp::LoadOptions;
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
    let report = |format| {
        quality_report(
            &model_fixture(name),
            Quantization::all(format),
            &LoadOptions::default(),
            &input,
            &mut |_, _| {},
        )
        .unwrap()
    };
    let exact = report(GgmlDType::F32);
    assert_eq!(exact.samples, 2);
    assert_eq!(exact.variants.len(), 3);
    for v in &exact.variants {
        assert_eq!(
            (v.mean_kl, v.p99_kl, v.top1_agreement),
            (0.0, 0.0, 1.0),
            "{v:?}"
        );
    }
    let q4 = report(GgmlDType::Q4_0);
    assert_eq!(q4.positions, exact.positions);
    for v in &q4.variants {
        assert!(v.mean_kl > 0.0 && v.p99_kl >= v.mean_kl, "{v:?}");
        assert!((0.0..=1.0).contains(&v.top1_agreement), "{v:?}");
    }
}
