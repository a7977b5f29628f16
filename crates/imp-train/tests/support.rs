//! Paths shared by the tests.

use std::path::PathBuf;

/// The tiny random-weight checkpoints of the `imp` crate's fixtures.
pub fn model_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../imp/tests/fixtures/models")
        .join(name)
}

/// This crate's fixtures, written by `scripts/fixtures/gen_train.py`.
pub fn fixture_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn image_folder() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../imp/tests/fixtures/images")
}

/// The checkpoints `scripts/fixtures/gen_train.py` wrote training fixtures for.
pub const TRAINED_MODELS: [&str; 3] = [
    "imp-v1.5-3b-phi2",
    "imp-v1.5-2b-qwen1.5",
    "imp-v1.5-4b-phi3",
];

/// Training options for a fixture model: stage 2, f32 on the CPU, the reference's defaults
/// otherwise; the output folder is the caller's to set.
pub fn train_options(model: &str) -> imp_train::run::TrainOptions {
    use imp_train::run::{Stage, TrainOptions};
    use imp_train::schedule::Scheduler;
    use imp_train::trainable::LoraSpec;
    TrainOptions {
        model: model_dir(model),
        data: fixture_dir(model).join("data.json"),
        image_folder: image_folder(),
        out: std::env::temp_dir().join("imp-train-unused"),
        stage: Stage::Lora,
        lora: LoraSpec {
            r: 4,
            alpha: 8.0,
            dropout: 0.0,
            targets: Vec::new(),
            lm_head: true,
        },
        init_projector: None,
        init_adapter: None,
        lr: 1e-3,
        projector_lr: 5e-4,
        weight_decay: 0.0,
        max_grad_norm: 0.0,
        epochs: 1,
        max_steps: None,
        micro_batch: 1,
        global_batch: 1,
        warmup_ratio: 0.0,
        scheduler: Scheduler::Constant,
        max_len: 4096,
        aspect: None,
        seed: 42,
        dtype: candle_core::DType::F32,
        device: candle_core::Device::Cpu,
        save_every: 0,
        resume: None,
        strict_masks: false,
        group_by_modality: false,
        recompute: imp_train::step::Recompute::None,
        residual_dropout: None,
    }
}
