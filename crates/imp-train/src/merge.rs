//! `imp train merge`: an adapter folded into a copy of its base checkpoint, in the base's own
//! layout (tensor names, shard files and index, storage dtype, config, tokenizer and remote
//! code), so that `imp run` and transformers load it like the released models.
//!
//! Each stored matrix `<module>.weight` with a LoRA pair becomes `W + scale · B·A`, computed
//! in f32 and stored back in the base's dtype (PEFT's `merge_and_unload`); the adapter's
//! replacement tensors (the trained projector) take the place of the base's.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use imp::adapter::Adapter;

use crate::{Error, Result};

/// What the merge did.
#[derive(Debug, Clone, Default)]
pub struct MergeReport {
    pub merged_matrices: usize,
    pub replaced_tensors: usize,
    pub files: Vec<PathBuf>,
}

/// Writes `base` with `adapter` merged into `out`, which must not exist yet or be empty, and
/// must not lie inside `base`. The files are written into a sibling `<out>.partial` folder
/// that becomes `out` only when everything is written, so a failed merge leaves nothing.
pub fn merge(base: &Path, adapter: &Adapter, out: &Path) -> Result<MergeReport> {
    if !base.is_dir() {
        return Err(Error::InvalidArgument(format!(
            "--model {} is not a model folder (merging needs the Hugging Face folder the \
             adapter was trained on)",
            base.display()
        )));
    }
    // The merged model replaces the folder whole, so an occupied one is never accepted.
    imp::files::check_output_dir(out, &[base], imp::files::Overwrite::Refuse)?;
    let mut partial = out.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    if partial.exists() {
        fs::remove_dir_all(&partial).map_err(io(&partial))?;
    }
    fs::create_dir_all(&partial).map_err(io(&partial))?;
    match write_merged(base, adapter, &partial) {
        Ok(mut report) => {
            if out.exists() {
                fs::remove_dir(out).map_err(io(out))?;
            }
            fs::rename(&partial, out).map_err(io(out))?;
            for file in &mut report.files {
                if let Ok(name) = file.strip_prefix(&partial) {
                    *file = out.join(name);
                }
            }
            Ok(report)
        }
        Err(error) => {
            let _ = fs::remove_dir_all(&partial);
            Err(error)
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |error| Error::Io { path, error }
}

fn write_merged(base: &Path, adapter: &Adapter, out: &Path) -> Result<MergeReport> {
    let mut report = MergeReport::default();
    let mut used = BTreeSet::new();
    let mut entries: Vec<PathBuf> = fs::read_dir(base)
        .map_err(io(base))?
        .map(|e| e.map(|e| e.path()).map_err(io(base)))
        .collect::<Result<_>>()?;
    entries.sort();
    for path in entries {
        let Some(name) = path.file_name() else {
            continue;
        };
        let target = out.join(name);
        if path.extension().is_some_and(|e| e == "safetensors") {
            merge_shard(&path, &target, adapter, &mut used, &mut report)?;
        } else {
            copy_all(&path, &target)?;
        }
        report.files.push(target);
    }
    let unused = adapter
        .lora_modules()
        .map(|(m, _)| m.to_owned())
        .chain(adapter.replacements().map(|(n, _)| n.to_owned()))
        .find(|name| !used.contains(name));
    if let Some(name) = unused {
        return Err(Error::InvalidArgument(format!(
            "the adapter's `{name}` matches no tensor of {}; was it trained on another model?",
            base.display()
        )));
    }
    Ok(report)
}

/// A file, or a folder with everything in it (a SigLIP config sub-folder, remote code).
fn copy_all(from: &Path, to: &Path) -> Result<()> {
    if from.is_file() {
        fs::copy(from, to).map_err(io(to))?;
        return Ok(());
    }
    fs::create_dir_all(to).map_err(io(to))?;
    for entry in fs::read_dir(from).map_err(io(from))? {
        let path = entry.map_err(io(from))?.path();
        if let Some(name) = path.file_name() {
            copy_all(&path, &to.join(name))?;
        }
    }
    Ok(())
}

fn merge_shard(
    path: &Path,
    target: &Path,
    adapter: &Adapter,
    used: &mut BTreeSet<String>,
    report: &mut MergeReport,
) -> Result<()> {
    let tensors = candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| Error::Data {
        path: path.to_path_buf(),
        message: format!("not a readable safetensors file: {e}"),
    })?;
    let mut merged: HashMap<String, Tensor> = HashMap::with_capacity(tensors.len());
    for (name, tensor) in tensors {
        let module = name.strip_suffix(".weight").unwrap_or(&name);
        let tensor = if let Some(replacement) = adapter.replacement(&name) {
            if replacement.dims() != tensor.dims() {
                return Err(Error::InvalidArgument(format!(
                    "the adapter's `{name}` has shape {:?}, the base's {:?}",
                    replacement.dims(),
                    tensor.dims()
                )));
            }
            used.insert(name.clone());
            report.replaced_tensors += 1;
            replacement
                .to_device(&Device::Cpu)?
                .to_dtype(tensor.dtype())?
        } else if let Some(pair) = adapter.lora(module) {
            let delta = pair
                .b
                .to_dtype(DType::F32)?
                .matmul(&pair.a.to_dtype(DType::F32)?)?;
            if delta.dims() != tensor.dims() {
                return Err(Error::InvalidArgument(format!(
                    "the adapter's LoRA for `{module}` gives a {:?} update, the base's weight \
                     is {:?}",
                    delta.dims(),
                    tensor.dims()
                )));
            }
            used.insert(module.to_owned());
            report.merged_matrices += 1;
            let weight = (tensor.to_dtype(DType::F32)? + (delta * adapter.config().scale())?)?;
            weight.to_dtype(tensor.dtype())?
        } else {
            tensor
        };
        merged.insert(name, tensor);
    }
    let metadata = HashMap::from([("format".to_owned(), "pt".to_owned())]);
    let partial = target.with_extension("safetensors.partial");
    safetensors::serialize_to_file(&merged, Some(metadata), &partial).map_err(|e| Error::Io {
        path: partial.clone(),
        error: std::io::Error::other(e.to_string()),
    })?;
    fs::rename(&partial, target).map_err(|error| Error::Io {
        path: target.to_path_buf(),
        error,
    })
}
