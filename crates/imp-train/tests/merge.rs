//! `imp_train::merge` against PEFT's `merge_and_unload` (`merged.*` of `expected.safetensors`,
//! written by `scripts/fixtures/gen_train.py` from the same `init_adapter/`): every merged
//! matrix of every family, the projector taken from the adapter, everything else copied byte
//! for byte; the merged checkpoint answering as the unmerged adapter does; and the folders a
//! merge must refuse to write into.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use imp::adapter::Adapter;
use imp::{generate, GenerationOptions, ImpModel, LoadOptions, Prompt};

use crate::support::{fixture_dir, image_folder, model_dir, TRAINED_MODELS};

/// Prefix of PEFT's merged weights in `expected.safetensors`.
const MERGED: &str = "merged.";
/// The vocabulary rows the fixture keeps of `lm_head.weight`.
const LM_HEAD_ROWS: &str = "rows.base_model.model.lm_head.lora_B.weight";

/// One stored tensor: safetensors' dtype name, shape and raw bytes.
#[derive(Debug, PartialEq)]
struct Raw {
    dtype: String,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

/// A model folder's `*.safetensors` files, by file name: each tensor raw and as a candle tensor.
struct Shards {
    raw: BTreeMap<String, BTreeMap<String, Raw>>,
    tensors: BTreeMap<String, Tensor>,
}

fn read_shards(dir: &Path) -> Shards {
    let mut raw = BTreeMap::new();
    let mut tensors = BTreeMap::new();
    for name in file_names(dir) {
        if !name.ends_with(".safetensors") {
            continue;
        }
        let path = dir.join(&name);
        let bytes = std::fs::read(&path).unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let shard = file
            .iter()
            .map(|(key, view)| {
                let stored = Raw {
                    dtype: format!("{:?}", view.dtype()),
                    shape: view.shape().to_vec(),
                    bytes: view.data().to_vec(),
                };
                (key.to_owned(), stored)
            })
            .collect();
        for (key, tensor) in candle_core::safetensors::load(&path, &Device::Cpu).unwrap() {
            let previous = tensors.insert(key.clone(), tensor);
            assert!(
                previous.is_none(),
                "{}: `{key}` stored twice",
                dir.display()
            );
        }
        raw.insert(name, shard);
    }
    Shards { raw, tensors }
}

/// The names in a folder, sorted.
fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Every file under a folder (one level of sub-folders) and its bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for name in file_names(dir) {
        let path = dir.join(&name);
        if path.is_dir() {
            for inner in file_names(&path) {
                files.insert(
                    format!("{name}/{inner}"),
                    std::fs::read(path.join(inner)).unwrap(),
                );
            }
        } else {
            files.insert(name, std::fs::read(path).unwrap());
        }
    }
    files
}

/// The spacing of a dtype's values in [1, 2): storing an f32 value in it moves the value by at
/// most half of this times the value's magnitude.
fn ulp_at_one(dtype: DType) -> f64 {
    match dtype {
        DType::F16 => 2f64.powi(-10),
        DType::BF16 => 2f64.powi(-7),
        DType::F32 => 2f64.powi(-23),
        DType::F64 => 2f64.powi(-52),
        other => panic!("no float storage dtype: {other:?}"),
    }
}

fn max_abs(t: &Tensor) -> f64 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    max_abs(&(a - b).unwrap())
}

fn f32(t: &Tensor) -> Tensor {
    t.to_dtype(DType::F32).unwrap()
}

fn load_adapter(model: &str) -> Adapter {
    Adapter::load(&fixture_dir(model).join("init_adapter"), &Device::Cpu).unwrap()
}

#[test]
fn merge_matches_peft_merge_and_unload() {
    for model in TRAINED_MODELS {
        let base_dir = model_dir(model);
        let adapter = load_adapter(model);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("merged");
        let report = imp_train::merge::merge(&base_dir, &adapter, &out).unwrap();

        assert_eq!(
            file_names(&out),
            file_names(&base_dir),
            "{model}: the merged folder's files"
        );
        let base_files = snapshot(&base_dir);
        let merged_files = snapshot(&out);
        for (name, bytes) in &base_files {
            if !name.ends_with(".safetensors") {
                assert!(
                    merged_files[name] == *bytes,
                    "{model}: {name} is not a copy"
                );
            }
        }
        let base = read_shards(&base_dir);
        let merged = read_shards(&out);

        let expected = candle_core::safetensors::load(
            fixture_dir(model).join("expected.safetensors"),
            &Device::Cpu,
        )
        .unwrap();
        let rows = &expected[LM_HEAD_ROWS];
        let reference: BTreeMap<&str, &Tensor> = expected
            .iter()
            .filter_map(|(key, t)| key.strip_prefix(MERGED).map(|name| (name, t)))
            .collect();
        let adapted: BTreeSet<String> = adapter
            .lora_modules()
            .map(|(module, _)| format!("{module}.weight"))
            .collect();
        assert_eq!(
            reference
                .keys()
                .map(|k| k.to_string())
                .collect::<BTreeSet<_>>(),
            adapted,
            "{model}: the fixture's merged matrices are the adapter's LoRA modules"
        );
        assert_eq!(report.merged_matrices, adapted.len(), "{model}");
        assert!(
            adapter.replacements().count() > 0,
            "{model}: the fixture adapter carries the projector"
        );
        assert_eq!(report.replaced_tensors, adapter.replacements().count());

        for (&name, &want) in &reference {
            let stored = &merged.tensors[name];
            let dtype = base.tensors[name].dtype();
            assert_eq!(stored.dtype(), dtype, "{model}: {name} keeps its dtype");
            let (ours, base_rows) = if name == "lm_head.weight" {
                (
                    stored.index_select(rows, 0).unwrap(),
                    base.tensors[name].index_select(rows, 0).unwrap(),
                )
            } else {
                (stored.clone(), base.tensors[name].clone())
            };
            // PEFT's f32 sum rounded to the storage dtype moves each value by at most half a
            // ulp of itself; one ulp at the tensor's largest magnitude bounds that with room
            // for the f32 sum's own rounding.
            let tolerance = ulp_at_one(dtype) * max_abs(want);
            let diff = max_abs_diff(&f32(&ours), want);
            let moved = max_abs_diff(&f32(&base_rows), want);
            eprintln!(
                "{model}: {name} ({dtype:?}): max |ours - PEFT| {diff:.3e} \
                 (tolerance {tolerance:.3e}, merge moved it by {moved:.3e})"
            );
            assert!(
                diff <= tolerance,
                "{model}: {name} differs from PEFT's merge by {diff:e} (tolerance {tolerance:e})"
            );
            assert!(
                moved > 10.0 * tolerance,
                "{model}: {name}: the merge is too small to test"
            );
        }

        for (name, replacement) in adapter.replacements() {
            let stored = &merged.tensors[name];
            let dtype = base.tensors[name].dtype();
            assert_eq!(stored.dtype(), dtype, "{model}: {name} keeps its dtype");
            let want: Vec<f32> = replacement
                .to_dtype(dtype)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let got: Vec<f32> = f32(stored).flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(got, want, "{model}: {name} is not the adapter's (cast)");
        }

        let changed: BTreeSet<&str> = reference
            .keys()
            .copied()
            .chain(adapter.replacements().map(|(name, _)| name))
            .collect();
        for (file, tensors) in &base.raw {
            let other = &merged.raw[file];
            assert_eq!(
                other.keys().collect::<Vec<_>>(),
                tensors.keys().collect::<Vec<_>>(),
                "{model}: the tensors of {file}"
            );
            for (name, stored) in tensors {
                if changed.contains(name.as_str()) {
                    assert_eq!(
                        (&other[name].dtype, &other[name].shape),
                        (&stored.dtype, &stored.shape),
                        "{model}: {file} {name}"
                    );
                } else {
                    assert!(
                        other[name] == *stored,
                        "{model}: {file} {name} is not the base's, byte for byte"
                    );
                }
            }
        }
    }
}

#[test]
fn merge_refuses_the_base_folder_and_a_non_empty_folder() {
    let model = "imp-v1.5-3b-phi2";
    let adapter = load_adapter(model);
    let dir = tempfile::tempdir().unwrap();
    // A copy of the base, so that a merge that wrongly goes ahead cannot spoil the fixture.
    let base = dir.path().join("base");
    std::fs::create_dir(&base).unwrap();
    for (name, bytes) in snapshot(&model_dir(model)) {
        let path = base.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    let occupied = dir.path().join("occupied");
    std::fs::create_dir(&occupied).unwrap();
    std::fs::write(occupied.join("notes.txt"), "mine").unwrap();
    let before = (snapshot(&base), snapshot(&occupied));

    let cases = [
        (base.clone(), "is the input"),
        (base.join("."), "is the input"),
        (dir.path().join("occupied/../base"), "is the input"),
        (occupied.clone(), "already holds files"),
        (occupied.join("notes.txt"), "is a regular file"),
        (base.join("merged"), "or inside it"),
    ];
    for (out, message) in cases {
        let error = imp_train::merge::merge(&base, &adapter, &out)
            .expect_err(&format!("merging into {}", out.display()))
            .to_string();
        assert!(error.contains(message), "{}: {error}", out.display());
    }
    // An adapter for another model fails after some shards were merged: nothing is left.
    let other = load_adapter("imp-v1.5-2b-qwen1.5");
    let out = dir.path().join("mismatched");
    imp_train::merge::merge(&base, &other, &out).expect_err("a Qwen2 adapter on Phi-2");
    assert!(!out.exists(), "a failed merge left {}", out.display());
    assert!(!dir.path().join("mismatched.partial").exists());
    assert!(
        (snapshot(&base), snapshot(&occupied)) == before,
        "a refused merge left files changed"
    );
}

#[test]
fn merged_checkpoint_answers_as_the_unmerged_adapter() {
    let model = "imp-v1.5-3b-phi2";
    let adapter = load_adapter(model);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("merged");
    imp_train::merge::merge(&model_dir(model), &adapter, &out).unwrap();
    let image = imp::load_rgb(&image_folder().join("skimage_coffee.png")).unwrap();
    let options = GenerationOptions {
        max_new_tokens: 1,
        top_logprobs: 5,
        ..GenerationOptions::default()
    };
    let first = |model: &ImpModel| {
        generate(
            model,
            &Prompt::from_cli("What is in the cup?"),
            std::slice::from_ref(&image),
            &options,
            &mut |_| {},
        )
        .unwrap()
        .top_logprobs
        .remove(0)
    };
    let unmerged = first(
        &ImpModel::load(
            &model_dir(model),
            &LoadOptions {
                adapter: Some(Arc::new(adapter)),
                ..LoadOptions::default()
            },
        )
        .unwrap(),
    );
    let merged = first(&ImpModel::load(&out, &LoadOptions::default()).unwrap());
    let base = first(&ImpModel::load(&model_dir(model), &LoadOptions::default()).unwrap());

    let dtype = read_shards(&model_dir(model)).tensors["lm_head.weight"].dtype();
    let ids = |top: &[(u32, f32)]| top.iter().map(|&(id, _)| id).collect::<Vec<_>>();
    assert_eq!(ids(&merged), ids(&unmerged), "{model}: the top-5 tokens");
    let largest = unmerged
        .iter()
        .map(|&(_, lp)| f64::from(lp.abs()))
        .fold(0.0, f64::max);
    // Every merged weight (and the projector) is rounded to the storage dtype, by up to half a
    // ulp of itself; through the layers that moves the log-probs by a fraction of a ulp of
    // their own size (about 0.6 measured), so one ulp of the largest is the allowance.
    let tolerance = ulp_at_one(dtype) * largest;
    let max_diff = |a: &[(u32, f32)], b: &[(u32, f32)]| {
        a.iter()
            .zip(b)
            .map(|(&(_, a), &(_, b))| f64::from((a - b).abs()))
            .fold(0.0, f64::max)
    };
    let diff = max_diff(&merged, &unmerged);
    assert!(
        ids(&base) != ids(&unmerged) || max_diff(&base, &unmerged) > 10.0 * tolerance,
        "{model}: the adapter hardly changes the answer; the comparison would prove nothing"
    );
    eprintln!(
        "{model}: top-5 log-probs merged vs unmerged: max diff {diff:.3e} (tolerance \
         {tolerance:.3e}) {merged:?} {unmerged:?}"
    );
    assert!(
        diff <= tolerance,
        "{model}: log-probs differ by {diff:e} (tolerance {tolerance:e})"
    );
}
