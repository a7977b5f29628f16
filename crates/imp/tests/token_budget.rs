//! The run-time visual-token budget against the reference (`scripts/fixtures/gen_token_budget.py`):
//! SigLIP at another image size with transformers' `interpolate_pos_encoding`, and torch's
//! ceil-mode average pooling before the projector.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use imp::{ImpModel, LoadOptions};
use serde::Deserialize;

#[derive(Deserialize)]
struct Cases {
    model: String,
    image: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    key: String,
    image_size: usize,
    pool: usize,
    tokens: usize,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/token_budget")
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

fn load(model: &Path, image_size: Option<usize>, pool: usize) -> imp::Result<ImpModel> {
    let options = LoadOptions {
        image_size,
        pool,
        ..Default::default()
    };
    ImpModel::load(model, &options)
}

#[test]
fn image_size_and_pooling_match_transformers_and_torch() {
    let cases: Cases =
        serde_json::from_str(&std::fs::read_to_string(root().join("cases.json")).unwrap()).unwrap();
    let expected: HashMap<String, Tensor> =
        candle_core::safetensors::load(root().join("expected.safetensors"), &Device::Cpu).unwrap();
    let model_dir = root().join(&cases.model);
    let image = imp::preprocess::load_rgb(&root().join(&cases.image)).unwrap();
    for case in &cases.cases {
        let model = load(&model_dir, Some(case.image_size), case.pool).unwrap();
        assert_eq!(model.image_tokens(), case.tokens, "{}", case.key);
        let pixels = model
            .preprocessor()
            .preprocess(&image, &Device::Cpu)
            .unwrap();
        let d = max_abs_diff(&pixels, &expected[&format!("{}.pixels", case.key)]);
        assert!(d <= 1e-6, "{}: pixels differ by {d}", case.key);
        let features = model.vision_features(&pixels).unwrap();
        if let Some(reference) = expected.get(&format!("{}.features", case.key)) {
            let d = max_abs_diff(&features, reference);
            assert!(d <= 1e-4, "{}: vision features differ by {d}", case.key);
        }
        let projected = model.project(&features).unwrap();
        let d = max_abs_diff(&projected, &expected[&format!("{}.projected", case.key)]);
        assert!(d <= 1e-4, "{}: pooled projection differs by {d}", case.key);
    }
}

#[test]
fn bad_budgets_are_refused() {
    let model_dir = root().join("../models/imp-v1.5-3b-phi2");
    let err = |size, pool| {
        load(&model_dir, size, pool)
            .err()
            .expect("must fail")
            .to_string()
    };
    assert!(err(Some(100), 1).contains("not a multiple of the patch size 14"));
    assert!(err(Some(14), 1).contains("too small"));
    assert!(err(None, 0).contains("pool 0"));
    assert!(err(None, 9).contains("pool 9"));
}
