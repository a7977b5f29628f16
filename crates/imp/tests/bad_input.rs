//! Broken checkpoints and requests give errors that name the problem, never a panic.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use imp::{generate, GenerationOptions, LoadOptions, Prompt};

use crate::support::{image, load, load_err, model_dir};

const MODEL: &str = "imp-v1-3b";
const EMBED: &str = "model.embed_tokens.weight";
const FC2: &str = "model.layers.1.mlp.fc2.weight";
const DENSE: &str = "model.layers.0.self_attn.dense.weight";

/// A private copy of a fixture model that a test may break.
fn copy_model(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(model_dir(name)).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, tmp.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    tmp
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

fn assert_contains(case: &str, message: &str, parts: &[&str]) {
    for part in parts {
        assert!(
            message.contains(part),
            "{case}: error `{message}` should mention `{part}`"
        );
    }
}

#[test]
fn missing_folder() {
    let msg = load_err(Path::new("/nonexistent/imp-model"), &LoadOptions::default());
    assert_contains(
        "missing folder",
        &msg,
        &["/nonexistent/imp-model", "no such model folder"],
    );
}

/// One way to break a copy of a fixture model, and what the load error must then mention.
struct Breakage {
    name: &'static str,
    model: &'static str,
    breaks: fn(&Path),
    mentions: &'static [&'static str],
}

/// Sets `key` of config.json (`vision_tower_config.key` for the vision part) to JSON `value`.
fn set_config(dir: &Path, key: &str, value: &str) {
    let value: serde_json::Value = serde_json::from_str(value).unwrap();
    edit_config(dir, |c| match key.strip_prefix("vision_tower_config.") {
        Some(key) => {
            c["vision_tower_config"][key] = value;
        }
        None => {
            c.insert(key.into(), value);
        }
    })
}

/// Configs that contradict the weights or hold impossible values (the fixture stores 2 decoder
/// layers, 51200 vocabulary rows, and 2 vision layers of a 3-layer tower on a 4x4 grid of 14 px
/// patches): `(key, value, what the error must mention)`.
const LYING_CONFIGS: [(&str, &str, &[&str]); 16] = [
    ("vocab_size", "0", &["`vocab_size` must be at least 1"]),
    ("vocab_size", "51201", &["vocab_size 51201", "51200 rows"]),
    (
        "num_hidden_layers",
        "3",
        &["num_hidden_layers 3", "2 decoder layers"],
    ),
    (
        "num_hidden_layers",
        "1",
        &["num_hidden_layers 1", "2 decoder layers"],
    ),
    ("rope_theta", "0", &["rope_theta 0"]),
    (
        "hidden_act",
        "\"banana\"",
        &["hidden_act \"banana\"", "gelu_new"],
    ),
    (
        "max_position_embeddings",
        "0",
        &["`max_position_embeddings` must be at least 1"],
    ),
    ("layer_norm_eps", "0", &["norm epsilon 0"]),
    (
        "mm_vision_select_layer",
        "100",
        &["mm_vision_select_layer 100", "2 vision layers"],
    ),
    (
        "mm_vision_select_layer",
        "-1",
        &["mm_vision_select_layer -1", "select -2"],
    ),
    (
        "vision_tower_config.image_size",
        "0",
        &["image_size 0", "4x4"],
    ),
    (
        "vision_tower_config.image_size",
        "100000",
        &["image_size 100000", "4x4"],
    ),
    (
        "vision_tower_config.patch_size",
        "0",
        &["patch_size 0", "(14)"],
    ),
    (
        "vision_tower_config.num_hidden_layers",
        "1e9",
        &["num_hidden_layers", "integer"],
    ),
    (
        "vision_tower_config.num_hidden_layers",
        "9",
        &["num_hidden_layers 9", "2 layers"],
    ),
    (
        "vision_tower_config.hidden_size",
        "64",
        &["hidden_size 64", "(32)"],
    ),
];

#[test]
fn configs_that_contradict_the_weights_are_refused() {
    for (key, value, mentions) in LYING_CONFIGS {
        let dir = copy_model(MODEL);
        set_config(dir.path(), key, value);
        let message = load_err(dir.path(), &LoadOptions::default());
        assert_contains(&format!("{key} = {value}"), &message, mentions);
    }
}

#[test]
fn non_finite_weights_stop_generation_with_an_error() {
    let dir = copy_model(MODEL);
    edit_weights(dir.path(), |t| {
        let shape = t[FC2].shape().clone();
        let nan = Tensor::full(f32::NAN, shape, &Device::Cpu).unwrap();
        t.insert(FC2.into(), nan.to_dtype(t[FC2].dtype()).unwrap());
    });
    let message = generate_err(dir.path(), Prompt::Raw("Hello".into()), &[]);
    assert_contains("NaN weights", &message, &["non-finite logits"]);
}

const BROKEN_CHECKPOINTS: [Breakage; 13] = [
    Breakage {
        name: "missing config",
        model: MODEL,
        breaks: |dir| std::fs::remove_file(dir.join("config.json")).unwrap(),
        mentions: &["config.json"],
    },
    Breakage {
        name: "invalid config JSON",
        model: MODEL,
        breaks: |dir| std::fs::write(dir.join("config.json"), "{\"model_type\": ").unwrap(),
        mentions: &["config.json", "invalid JSON"],
    },
    Breakage {
        name: "unknown model type",
        model: MODEL,
        breaks: |dir| {
            edit_config(dir, |c| {
                c.insert("model_type".into(), "llava_llama".into());
            })
        },
        mentions: &["unknown model_type `llava_llama`"],
    },
    Breakage {
        name: "missing config key",
        model: MODEL,
        breaks: |dir| {
            edit_config(dir, |c| {
                c.remove("num_hidden_layers");
            })
        },
        mentions: &["missing key `num_hidden_layers`"],
    },
    Breakage {
        name: "config key of the wrong type",
        model: MODEL,
        breaks: |dir| {
            edit_config(dir, |c| {
                c.insert("hidden_size".into(), "ten".into());
            })
        },
        mentions: &["hidden_size", "integer"],
    },
    Breakage {
        name: "missing tensor",
        model: MODEL,
        breaks: |dir| {
            edit_weights(dir, |t| {
                t.remove(FC2);
            })
        },
        mentions: &[FC2, "missing"],
    },
    Breakage {
        name: "tensor of the wrong shape",
        model: MODEL,
        breaks: |dir| {
            edit_weights(dir, |t| {
                let wrong = Tensor::zeros((10, 9), DType::F16, &Device::Cpu).unwrap();
                t.insert(DENSE.into(), wrong);
            })
        },
        mentions: &[DENSE, "[10, 9]", "expected [10, 10]"],
    },
    Breakage {
        name: "unsupported storage dtype",
        model: MODEL,
        breaks: |dir| {
            edit_weights(dir, |t| {
                let f64 = t[EMBED].to_dtype(DType::F64).unwrap();
                t.insert(EMBED.into(), f64);
            })
        },
        mentions: &[EMBED, "unsupported storage dtype"],
    },
    Breakage {
        name: "corrupt safetensors",
        model: MODEL,
        breaks: |dir| {
            std::fs::write(
                dir.join("model.safetensors"),
                b"not a safetensors file at all",
            )
            .unwrap()
        },
        mentions: &["model.safetensors", "not a readable safetensors"],
    },
    Breakage {
        name: "truncated safetensors",
        model: MODEL,
        breaks: |dir| {
            let path = dir.join("model.safetensors");
            let bytes = std::fs::read(&path).unwrap();
            std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        },
        mentions: &["model.safetensors"],
    },
    Breakage {
        name: "no weights",
        model: MODEL,
        breaks: |dir| std::fs::remove_file(dir.join("model.safetensors")).unwrap(),
        mentions: &["no weights found"],
    },
    Breakage {
        name: "index with a missing shard",
        model: "imp-v1.5-3b-phi2",
        breaks: |dir| std::fs::remove_file(dir.join("model-00002-of-00003.safetensors")).unwrap(),
        mentions: &["model-00002-of-00003.safetensors", "missing"],
    },
    Breakage {
        name: "index naming a file outside the folder",
        model: "imp-v1.5-3b-phi2",
        breaks: |dir| {
            let index = dir.join("model.safetensors.index.json");
            let text = std::fs::read_to_string(&index).unwrap();
            let text = text.replace("model-00001-of", "../model-00001-of");
            std::fs::write(index, text).unwrap();
        },
        mentions: &[
            "../model-00001-of-00003.safetensors",
            "not a file name inside",
        ],
    },
];

#[test]
fn broken_checkpoints_fail_naming_the_problem() {
    for case in &BROKEN_CHECKPOINTS {
        let dir = copy_model(case.model);
        (case.breaks)(dir.path());
        let message = load_err(dir.path(), &LoadOptions::default());
        assert_contains(case.name, &message, case.mentions);
    }
}

fn generate_err(dir: &Path, prompt: Prompt, images: &[image::RgbImage]) -> String {
    let model = load(dir, &LoadOptions::default());
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
        &[image("skimage_chelsea.png")],
    );
    assert_contains(
        "prompt longer than the context",
        &msg,
        &["context too long", "limit of 40"],
    );
}

/// (raw prompt, images given, what the error must mention)
const MARKER_MISMATCHES: [(&str, usize, &[&str]); 2] = [
    (
        "USER: <image>\n<image>\nCompare. ASSISTANT:",
        1,
        &["2 `<image>` marker(s)", "1 image(s)"],
    ),
    (
        "USER: <image>\nWhat? ASSISTANT:",
        2,
        &["1 `<image>` marker(s)", "2 image(s)"],
    ),
];

#[test]
fn image_markers_must_match_the_images() {
    let chelsea = image("skimage_chelsea.png");
    for (prompt, count, mentions) in MARKER_MISMATCHES {
        let images = vec![chelsea.clone(); count];
        let message = generate_err(&model_dir(MODEL), Prompt::Raw(prompt.into()), &images);
        let case = format!("{prompt:?} with {count} image(s)");
        assert_contains(&case, &message, mentions);
    }
}
