//! Broken checkpoints and requests give errors that name the problem, never a panic.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use imp::{generate, GenerationOptions, ImpModel, LoadOptions, Prompt};

const MODEL: &str = "imp-v1-3b";
const EMBED: &str = "model.embed_tokens.weight";

fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
}

/// A private copy of a fixture model that a test may break.
fn copy_model(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture_dir(name)).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, tmp.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    tmp
}

fn load_err(dir: &Path) -> String {
    match ImpModel::load(dir, &LoadOptions::default()) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let path = dir.join("config.json");
    let mut value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(value.as_object_mut().unwrap());
    std::fs::write(&path, value.to_string()).unwrap();
}

fn edit_weights(dir: &Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let path = dir.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, &path).unwrap();
}

fn assert_contains(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(
            message.contains(part),
            "error `{message}` should mention `{part}`"
        );
    }
}

#[test]
fn missing_folder() {
    let msg = load_err(Path::new("/nonexistent/imp-model"));
    assert_contains(&msg, &["/nonexistent/imp-model", "no such model folder"]);
}

#[test]
fn missing_config() {
    let dir = copy_model(MODEL);
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    assert_contains(&load_err(dir.path()), &["config.json"]);
}

#[test]
fn invalid_config_json() {
    let dir = copy_model(MODEL);
    std::fs::write(dir.path().join("config.json"), "{\"model_type\": ").unwrap();
    assert_contains(&load_err(dir.path()), &["config.json", "invalid JSON"]);
}

#[test]
fn unknown_model_type() {
    let dir = copy_model(MODEL);
    edit_config(dir.path(), |c| {
        c.insert("model_type".into(), "llava_llama".into());
    });
    assert_contains(&load_err(dir.path()), &["unknown model_type `llava_llama`"]);
}

#[test]
fn missing_config_key() {
    let dir = copy_model(MODEL);
    edit_config(dir.path(), |c| {
        c.remove("num_hidden_layers");
    });
    assert_contains(&load_err(dir.path()), &["missing key `num_hidden_layers`"]);
}

#[test]
fn config_key_of_wrong_type() {
    let dir = copy_model(MODEL);
    edit_config(dir.path(), |c| {
        c.insert("hidden_size".into(), "ten".into());
    });
    assert_contains(&load_err(dir.path()), &["hidden_size", "integer"]);
}

#[test]
fn missing_tensor() {
    let dir = copy_model(MODEL);
    let name = "model.layers.1.mlp.fc2.weight";
    edit_weights(dir.path(), |t| {
        t.remove(name);
    });
    assert_contains(&load_err(dir.path()), &[name, "missing"]);
}

#[test]
fn tensor_of_wrong_shape() {
    let dir = copy_model(MODEL);
    let name = "model.layers.0.self_attn.dense.weight";
    edit_weights(dir.path(), |t| {
        t.insert(
            name.into(),
            Tensor::zeros((10, 9), DType::F16, &Device::Cpu).unwrap(),
        );
    });
    assert_contains(
        &load_err(dir.path()),
        &[name, "[10, 9]", "expected [10, 10]"],
    );
}

#[test]
fn unsupported_storage_dtype() {
    let dir = copy_model(MODEL);
    edit_weights(dir.path(), |t| {
        let f64 = t[EMBED].to_dtype(DType::F64).unwrap();
        t.insert(EMBED.into(), f64);
    });
    assert_contains(&load_err(dir.path()), &[EMBED, "unsupported storage dtype"]);
}

#[test]
fn corrupt_safetensors() {
    let dir = copy_model(MODEL);
    std::fs::write(
        dir.path().join("model.safetensors"),
        b"not a safetensors file at all",
    )
    .unwrap();
    assert_contains(
        &load_err(dir.path()),
        &["model.safetensors", "not a readable safetensors"],
    );
}

#[test]
fn truncated_safetensors() {
    let dir = copy_model(MODEL);
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert_contains(&load_err(dir.path()), &["model.safetensors"]);
}

#[test]
fn no_weights() {
    let dir = copy_model(MODEL);
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    assert_contains(&load_err(dir.path()), &["no weights found"]);
}

#[test]
fn index_with_missing_shard() {
    let dir = copy_model("imp-v1.5-3b-phi2");
    std::fs::remove_file(dir.path().join("model-00002-of-00003.safetensors")).unwrap();
    assert_contains(
        &load_err(dir.path()),
        &["model-00002-of-00003.safetensors", "missing"],
    );
}

fn chelsea() -> image::RgbImage {
    imp::preprocess::load_rgb(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images/skimage_chelsea.png"),
    )
    .unwrap()
}

fn generate_err(dir: &Path, prompt: Prompt, images: &[image::RgbImage]) -> String {
    let model = ImpModel::load(dir, &LoadOptions::default()).unwrap();
    let options = GenerationOptions {
        max_new_tokens: 4,
        ..Default::default()
    };
    match generate(&model, &prompt, images, &options, &mut |_| {}) {
        Ok(g) => panic!("generation should fail, got {:?}", g.text),
        Err(e) => e.to_string(),
    }
}

#[test]
fn prompt_longer_than_context() {
    let dir = copy_model(MODEL);
    edit_config(dir.path(), |c| {
        c.insert("tokenizer_model_max_length".into(), 40.into());
    });
    let msg = generate_err(
        dir.path(),
        Prompt::Question("Describe.".into()),
        &[chelsea()],
    );
    assert_contains(&msg, &["context too long", "limit of 40"]);
}

#[test]
fn more_markers_than_images() {
    let msg = generate_err(
        &fixture_dir(MODEL),
        Prompt::Raw("USER: <image>\n<image>\nCompare. ASSISTANT:".into()),
        &[chelsea()],
    );
    assert_contains(&msg, &["2 `<image>` marker(s)", "1 image(s)"]);
}

#[test]
fn images_without_markers() {
    let msg = generate_err(
        &fixture_dir(MODEL),
        Prompt::Raw("USER: <image>\nWhat? ASSISTANT:".into()),
        &[chelsea(), chelsea()],
    );
    assert_contains(&msg, &["1 `<image>` marker(s)", "2 image(s)"]);
}
