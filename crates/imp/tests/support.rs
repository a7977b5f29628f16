//! Shared by the topics: fixture paths and readers, the reference outputs of the tiny models,
//! loading, the reference's greedy answer, and tensor comparison.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use image::RgbImage;
use imp::{generate, Generation, GenerationOptions, ImpModel, LoadOptions, Prompt};
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// Every released checkpoint layout as a tiny random-weight model (`scripts/fixtures/gen_models.py`),
/// with the tensor-name style it is detected as.
pub const MODELS: [(&str, &str); 6] = [
    // Phi with HF names, one f16 file.
    ("imp-v1-3b", "hf"),
    // The old revision: phi-msft names, bf16, vocab.json + merges.txt.
    ("imp-v1-3b-msft", "msft"),
    // Phi-2, sharded, f16.
    ("imp-v1.5-3b-phi2", "hf"),
    // phi-msft names with the SigLIP config in a subfolder.
    ("imp-v1.5-3b-196", "msft"),
    // Qwen1.5, sharded, with vocab.json + merges.txt only.
    ("imp-v1.5-2b-qwen1.5", "qwen2"),
    // Phi-3, pad aspect, f32.
    ("imp-v1.5-4b-phi3", "phi3"),
];

pub fn fixture(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(relative)
}

pub fn model_dir(name: &str) -> PathBuf {
    fixture("models").join(name)
}

/// A test photo from `fixtures/images`.
pub fn image(name: &str) -> RgbImage {
    imp::preprocess::load_rgb(&fixture("images").join(name)).unwrap()
}

pub fn read_json<T: DeserializeOwned>(path: &Path) -> T {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn read_tensors(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What transformers gave for a tiny model (`expected.json` beside it).
#[derive(Deserialize)]
pub struct Expected {
    pub style: String,
    pub image: String,
    pub visual_tokens: usize,
    pub question: String,
    pub prompt: String,
    pub prompt_ids: Vec<u32>,
    pub prompt_tokens: usize,
    pub greedy_tokens: Vec<u32>,
    pub top_logprobs: Vec<Vec<(u32, f32)>>,
    pub text: String,
    pub chat: Chat,
}

/// The multi-turn conversation of [`Expected`], rendered and tokenized.
#[derive(Deserialize)]
pub struct Chat {
    pub turns: Vec<(String, Option<String>)>,
    pub prompt: String,
    pub prompt_ids: Vec<u32>,
}

pub fn expected(name: &str) -> Expected {
    read_json(&model_dir(name).join("expected.json"))
}

pub fn load(path: &Path, options: &LoadOptions) -> ImpModel {
    ImpModel::load(path, options).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The message of a load that must fail.
pub fn load_err(path: &Path, options: &LoadOptions) -> String {
    match ImpModel::load(path, options) {
        Ok(_) => panic!("loading {} should fail", path.display()),
        Err(e) => e.to_string(),
    }
}

/// The fixture's question about its photo answered greedily for as many tokens as the
/// reference gave, with the top-5 log-probabilities of each step.
pub fn answer(model: &ImpModel, name: &str, on_text: &mut dyn FnMut(&str)) -> Generation {
    let e = expected(name);
    let image = imp::preprocess::load_rgb(&model_dir(name).join(&e.image)).unwrap();
    let options = GenerationOptions {
        max_new_tokens: e.greedy_tokens.len(),
        top_logprobs: 5,
        ..Default::default()
    };
    generate(
        model,
        &Prompt::Question(e.question),
        &[image],
        &options,
        on_text,
    )
    .unwrap()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}
