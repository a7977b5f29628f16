//! Reads a Hugging Face model folder: `model.safetensors` or shards listed by
//! `model.safetensors.index.json`, memory-mapped, in f32, f16 or bf16 storage.

pub mod names;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use crate::{Error, Result};

pub use names::{NamingStyle, Source};

/// The weight files of one checkpoint, memory-mapped; tensors are read on demand.
pub struct Checkpoint {
    dir: PathBuf,
    files: Vec<(PathBuf, MmapedSafetensors)>,
    /// Tensor name -> index into `files`.
    routing: HashMap<String, usize>,
}

impl Checkpoint {
    /// Opens every weight file of the folder and checks their headers.
    pub fn open(dir: &Path) -> Result<Self> {
        let paths = weight_files(dir)?;
        let mut files = Vec::with_capacity(paths.len());
        let mut routing = HashMap::new();
        for path in paths {
            // Safety: the files are only read; a checkpoint modified while mapped is a user
            // error that candle surfaces as a read of changed bytes, not undefined behaviour
            // in this crate's own code.
            let tensors =
                unsafe { MmapedSafetensors::new(&path) }.map_err(|e| Error::Checkpoint {
                    path: path.clone(),
                    message: format!("not a readable safetensors file ({e})"),
                })?;
            for (name, _) in tensors.tensors() {
                routing.insert(name, files.len());
            }
            files.push((path, tensors));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            files,
            routing,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn contains(&self, name: &str) -> bool {
        self.routing.contains_key(name)
    }

    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.routing.keys().map(String::as_str)
    }

    fn view(&self, name: &str) -> Result<safetensors::tensor::TensorView<'_>> {
        let index = *self.routing.get(name).ok_or_else(|| {
            Error::tensor(
                name,
                format!("missing from the checkpoint in {}", self.dir.display()),
            )
        })?;
        let (path, tensors) = &self.files[index];
        tensors.get(name).map_err(|e| Error::Checkpoint {
            path: path.clone(),
            message: format!("cannot read tensor `{name}` ({e})"),
        })
    }

    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        Ok(self.view(name)?.shape().to_vec())
    }

    /// Number of stored elements per storage dtype, for reporting.
    pub fn storage_dtypes(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for (_, tensors) in &self.files {
            for (_, view) in tensors.tensors() {
                let elements: usize = view.shape().iter().product();
                *counts
                    .entry(format!("{:?}", view.dtype()).to_lowercase())
                    .or_default() += elements;
            }
        }
        counts
    }

    /// Loads one tensor (or rows of several, concatenated) in `dtype`, checking its shape.
    pub fn load(
        &self,
        source: &Source,
        shape: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let tensor = match source {
            Source::Tensor(name) => self.load_one(name, dtype, device)?,
            Source::Rows(names) => {
                let parts = names
                    .iter()
                    .map(|name| self.load_one(name, dtype, device))
                    .collect::<Result<Vec<_>>>()?;
                let trailing = parts[0].dims()[1..].to_vec();
                if let Some((name, part)) = names
                    .iter()
                    .zip(&parts)
                    .find(|(_, p)| p.dims()[1..] != trailing[..])
                {
                    return Err(Error::tensor(
                        name.as_str(),
                        format!(
                            "shape {:?} does not stack with {:?} of `{}`",
                            part.dims(),
                            parts[0].dims(),
                            names[0]
                        ),
                    ));
                }
                Tensor::cat(&parts, 0)?
            }
        };
        if tensor.dims() != shape {
            return Err(Error::tensor(
                source.to_string(),
                format!("has shape {:?}, expected {:?}", tensor.dims(), shape),
            ));
        }
        Ok(tensor)
    }

    fn load_one(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let view = self.view(name)?;
        let stored = view.dtype();
        use safetensors::Dtype;
        if !matches!(stored, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
            return Err(Error::tensor(
                name,
                format!("unsupported storage dtype {stored:?} (expected F32, F16 or BF16)"),
            ));
        }
        let index = self.routing[name];
        let tensor = self.files[index]
            .1
            .load(name, device)
            .map_err(|e| Error::tensor(name, format!("cannot be read ({e})")))?;
        Ok(tensor.to_dtype(dtype)?)
    }
}

/// The safetensors files of a folder: the shards named by the index, else `model.safetensors`.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index_path = dir.join("model.safetensors.index.json");
    if index_path.is_file() {
        let text = std::fs::read_to_string(&index_path).map_err(|e| Error::io(&index_path, e))?;
        let index: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::Checkpoint {
                path: index_path.clone(),
                message: format!("invalid JSON ({e})"),
            })?;
        let map = index
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::Checkpoint {
                path: index_path.clone(),
                message: "has no `weight_map` object".into(),
            })?;
        let mut shards: Vec<String> = map
            .values()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| Error::Checkpoint {
                        path: index_path.clone(),
                        message: format!("`weight_map` value {v} is not a file name"),
                    })
            })
            .collect::<Result<_>>()?;
        shards.sort();
        shards.dedup();
        let missing: Vec<&String> = shards.iter().filter(|s| !dir.join(s).is_file()).collect();
        if !missing.is_empty() {
            return Err(Error::Checkpoint {
                path: index_path,
                message: format!(
                    "lists shard files that are missing: {}",
                    missing
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        return Ok(shards.into_iter().map(|s| dir.join(s)).collect());
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    Err(Error::Checkpoint {
        path: dir.to_path_buf(),
        message: "no weights found: expected model.safetensors or model.safetensors.index.json \
                  with its shards (PyTorch .bin checkpoints are not supported; convert them to \
                  safetensors)"
            .into(),
    })
}

/// Loads named weights into model building blocks, in one compute dtype on one device.
pub struct Weights<'a> {
    pub checkpoint: &'a Checkpoint,
    pub dtype: DType,
    pub device: Device,
}

impl Weights<'_> {
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.checkpoint.load(
            &Source::Tensor(name.to_owned()),
            shape,
            self.dtype,
            &self.device,
        )
    }

    /// A linear layer with weight `[out, in]` and, where named, bias `[out]`.
    pub fn linear(
        &self,
        names: &names::LinearNames,
        out_features: usize,
        in_features: usize,
    ) -> Result<crate::linear::Linear> {
        let weight = self.checkpoint.load(
            &names.weight,
            &[out_features, in_features],
            self.dtype,
            &self.device,
        )?;
        let bias = names
            .bias
            .as_ref()
            .map(|b| {
                self.checkpoint
                    .load(b, &[out_features], self.dtype, &self.device)
            })
            .transpose()?;
        crate::linear::Linear::new(weight, bias)
    }

    /// LayerNorm where the names include a bias, RMSNorm otherwise.
    pub fn norm(
        &self,
        names: &names::NormNames,
        dim: usize,
        eps: f64,
    ) -> Result<crate::norm::Norm> {
        let weight = self.tensor(&names.weight, &[dim])?;
        Ok(match &names.bias {
            Some(bias) => crate::norm::Norm::layer(weight, self.tensor(bias, &[dim])?, eps),
            None => crate::norm::Norm::rms(weight, eps),
        })
    }
}
