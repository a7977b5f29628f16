//! The files the Imp reference (PEFT 0.4) writes after a LoRA run: `adapter_model.bin` and
//! `non_lora_trainables.bin` are `torch.save` pickles (zip format), not safetensors.
//! `reference_output/` of the Phi-2 fixture (written by `scripts/fixtures/gen_train.py`) holds
//! `init_adapter/`'s LoRA without lm_head and its projector in that form: an adapter read from it
//! is `init_adapter/`'s, bit for bit, and merges into a checkpoint that loads.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use imp::adapter::Adapter;
use imp::{ImpModel, LoadOptions};

use crate::support::{fixture_dir, model_dir, TRAINED_MODELS};

const MODEL: &str = "imp-v1.5-3b-phi2";

fn load(folder: &str) -> Adapter {
    let dir = fixture_dir(MODEL).join(folder);
    Adapter::load(&dir, &Device::Cpu)
        .unwrap_or_else(|e| panic!("Adapter::load({}): {e}", dir.display()))
}

/// A tensor's dtype, shape and the bit patterns of its values (f32).
fn bits(t: &Tensor) -> (DType, Vec<usize>, Vec<u32>) {
    let values: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    (
        t.dtype(),
        t.dims().to_vec(),
        values.into_iter().map(f32::to_bits).collect(),
    )
}

#[test]
fn reference_output_is_the_init_adapter_without_lm_head() {
    let dir = fixture_dir(MODEL).join("reference_output");
    for name in [
        "adapter_model.bin",
        "non_lora_trainables.bin",
        "adapter_config.json",
    ] {
        assert!(dir.join(name).is_file(), "the fixture has {name}");
    }
    for name in [
        "adapter_model.safetensors",
        "non_lora_trainables.safetensors",
    ] {
        assert!(
            !dir.join(name).exists(),
            "{name} would be read instead of its .bin"
        );
    }
    let reference = load("reference_output");
    let init = load("init_adapter");

    let config = reference.config();
    assert_eq!((config.r, config.lora_alpha), (4, 8.0));
    assert_eq!(config.scale(), init.config().scale());
    let mut targets = config.target_modules.clone();
    targets.sort();
    assert_eq!(
        targets,
        ["dense", "fc1", "fc2", "k_proj", "q_proj", "v_proj"]
    );

    let pairs: BTreeMap<&str, _> = reference.lora_modules().collect();
    assert!(
        reference.lora("lm_head").is_none(),
        "the reference output has no lm_head pair"
    );
    assert!(init.lora("lm_head").is_some(), "init_adapter has one");
    let init_pairs: BTreeMap<&str, _> = init
        .lora_modules()
        .filter(|(module, _)| *module != "lm_head")
        .collect();
    assert_eq!(
        pairs.keys().collect::<Vec<_>>(),
        init_pairs.keys().collect::<Vec<_>>(),
        "the LoRA modules"
    );
    assert_eq!(pairs.len(), 12, "6 modules in each of 2 layers");
    for (module, pair) in &pairs {
        let want = init_pairs[module];
        assert_eq!(bits(&pair.a), bits(&want.a), "{module}: lora_A");
        assert_eq!(bits(&pair.b), bits(&want.b), "{module}: lora_B");
        assert_eq!(pair.a.dtype(), DType::F32);
    }

    let replacements: BTreeMap<&str, &Tensor> = reference.replacements().collect();
    let init_replacements: BTreeMap<&str, &Tensor> = init.replacements().collect();
    assert_eq!(
        replacements.keys().copied().collect::<Vec<_>>(),
        [
            "model.mm_projector.0.bias",
            "model.mm_projector.0.weight",
            "model.mm_projector.2.bias",
            "model.mm_projector.2.weight",
        ],
        "the projector from non_lora_trainables.bin"
    );
    assert_eq!(
        replacements.keys().collect::<Vec<_>>(),
        init_replacements.keys().collect::<Vec<_>>()
    );
    for (name, tensor) in &replacements {
        assert_eq!(tensor.dtype(), DType::F32, "{name}");
        assert_eq!(bits(tensor), bits(init_replacements[name]), "{name}");
    }
}

#[test]
fn reference_output_merges_into_a_loadable_checkpoint() {
    let adapter = load("reference_output");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("merged");
    let report = imp_train::merge::merge(&model_dir(MODEL), &adapter, &out).unwrap();
    assert_eq!(report.merged_matrices, 12);
    assert_eq!(report.replaced_tensors, 4);
    ImpModel::load(&out, &LoadOptions::default())
        .unwrap_or_else(|e| panic!("loading the merged {}: {e}", out.display()));
}

#[test]
fn a_torn_projector_replacement_is_refused() {
    let dir = fixture_dir("imp-v1.5-3b-phi2").join("reference_output");
    let full = Adapter::load(&dir, &Device::Cpu).unwrap();
    let (name, tensor) = full.replacements().next().unwrap();
    let torn = Adapter::new(
        full.config().clone(),
        Default::default(),
        [(name.to_owned(), tensor.clone())].into(),
    )
    .unwrap();
    let options = LoadOptions {
        adapter: Some(std::sync::Arc::new(torn)),
        ..Default::default()
    };
    let error = ImpModel::load(&model_dir("imp-v1.5-3b-phi2"), &options)
        .err()
        .expect("a projector with one of four tensors replaced")
        .to_string();
    assert!(error.contains("replaces part of the projector"), "{error}");
}

/// The other direction: an adapter saved by imp is the files PEFT wrote for it, tensor for
/// tensor (names, dtypes, shapes, bits; less the `base_layer` copies newer PEFT adds, which its
/// loader does not need), with every `adapter_config.json` value PEFT's `LoraConfig` reads equal.
#[test]
fn adapters_saved_by_imp_are_the_files_peft_wrote() {
    for name in TRAINED_MODELS {
        let peft = fixture_dir(name).join("init_adapter");
        let saved = tempfile::tempdir().unwrap();
        Adapter::load(&peft, &Device::Cpu)
            .unwrap()
            .save(saved.path())
            .unwrap();
        for file in [
            "adapter_model.safetensors",
            "non_lora_trainables.safetensors",
        ] {
            let read = |dir: &std::path::Path| -> BTreeMap<String, _> {
                candle_core::safetensors::load(dir.join(file), &Device::Cpu)
                    .unwrap()
                    .into_iter()
                    .filter(|(key, _)| !key.contains(".base_layer."))
                    .map(|(key, t)| (key, (t.dtype(), bits(&t.to_dtype(DType::F32).unwrap()))))
                    .collect()
            };
            let (want, got) = (read(&peft), read(saved.path()));
            assert!(!want.is_empty(), "{name}: {file} is empty");
            assert_eq!(
                got.keys().collect::<Vec<_>>(),
                want.keys().collect::<Vec<_>>(),
                "{name}: {file} names"
            );
            assert!(got == want, "{name}: {file} values");
        }
        let config = |dir: &std::path::Path| -> serde_json::Value {
            serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap())
                .unwrap()
        };
        let (want, got) = (config(&peft), config(saved.path()));
        for key in [
            "peft_type",
            "task_type",
            "r",
            "lora_dropout",
            "bias",
            "fan_in_fan_out",
            "modules_to_save",
            "init_lora_weights",
            "layers_to_transform",
            "layers_pattern",
            "use_rslora",
            "use_dora",
        ] {
            assert_eq!(got[key], want[key], "{name}: adapter_config.json `{key}`");
        }
        assert_eq!(
            got["lora_alpha"].as_f64(),
            want["lora_alpha"].as_f64(),
            "{name}: lora_alpha"
        );
        let sorted = |v: &serde_json::Value| {
            let mut names: Vec<String> = serde_json::from_value(v.clone()).unwrap();
            names.sort();
            names
        };
        assert_eq!(
            sorted(&got["target_modules"]),
            sorted(&want["target_modules"]),
            "{name}: target_modules"
        );
    }
}
