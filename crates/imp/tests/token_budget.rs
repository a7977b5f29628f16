//! The run-time visual-token budget against the reference (`scripts/fixtures/gen_token_budget.py`):
//! SigLIP at another image size with transformers' `interpolate_pos_encoding`, and torch's
//! ceil-mode average pooling before the projector.

use std::path::PathBuf;

use candle_core::Device;
use imp::LoadOptions;
use serde::Deserialize;

use crate::support::{fixture, load, load_err, max_abs_diff, model_dir, read_json, read_tensors};

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
    fixture("token_budget")
}

fn budget(image_size: Option<usize>, pool: usize) -> LoadOptions {
    LoadOptions {
        image_size,
        pool,
        ..Default::default()
    }
}

#[test]
fn image_size_and_pooling_match_transformers_and_torch() {
    let cases: Cases = read_json(&root().join("cases.json"));
    let expected = read_tensors(&root().join("expected.safetensors"));
    let checkpoint = root().join(&cases.model);
    let image = imp::preprocess::load_rgb(&root().join(&cases.image)).unwrap();
    for case in &cases.cases {
        let model = load(&checkpoint, &budget(Some(case.image_size), case.pool));
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

/// (image size, pool, what the error must mention)
const BAD_BUDGETS: [(Option<usize>, usize, &str); 4] = [
    (Some(100), 1, "not a multiple of the patch size 14"),
    (Some(14), 1, "too small"),
    (None, 0, "pool 0"),
    (None, 9, "pool 9"),
];

#[test]
fn bad_budgets_are_refused() {
    let phi2 = model_dir("imp-v1.5-3b-phi2");
    for (image_size, pool, mention) in BAD_BUDGETS {
        let message = load_err(&phi2, &budget(image_size, pool));
        assert!(
            message.contains(mention),
            "image size {image_size:?}, pool {pool}: `{message}` should mention `{mention}`"
        );
    }
}
