//! A Hugging Face model folder: `model.safetensors`, or the shards that
//! `model.safetensors.index.json` lists, in f32, f16 or bf16 storage.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::{Dtype, SafeTensors};

use super::{release_pages, TensorSource};
use crate::config::ConfigFiles;
use crate::files;
use crate::names::TensorShapes;
use crate::tokenizer::ImpTokenizer;
use crate::{Error, Result};

struct WeightFile {
    path: PathBuf,
    mmap: Mmap,
    /// Offset of the data section (after the 8-byte length and the JSON header).
    data_start: usize,
    metadata: Metadata,
}

/// The safetensors files of one model folder, memory-mapped.
pub struct Folder {
    dir: PathBuf,
    files: Vec<WeightFile>,
    /// Tensor name -> index into `files`.
    routing: HashMap<String, usize>,
}

impl Folder {
    /// Maps every weight file of the folder and validates its header against its length.
    pub fn open(dir: &Path) -> Result<Self> {
        let mut files = Vec::new();
        let mut routing = HashMap::new();
        for path in weight_files(dir)? {
            let mmap = files::map(&path)?;
            let (header_len, metadata) =
                SafeTensors::read_metadata(&mmap).map_err(|e| Error::Checkpoint {
                    path: path.clone(),
                    message: format!("not a readable safetensors file ({e})"),
                })?;
            for name in metadata.tensors().into_keys() {
                routing.insert(name, files.len());
            }
            files.push(WeightFile {
                path,
                mmap,
                data_start: 8 + header_len,
                metadata,
            });
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            files,
            routing,
        })
    }

    fn info(&self, name: &str) -> Result<(&WeightFile, &TensorInfo)> {
        let missing = || {
            Error::tensor(
                name,
                format!("missing from the checkpoint in {}", self.dir.display()),
            )
        };
        let file = &self.files[*self.routing.get(name).ok_or_else(missing)?];
        let info = file.metadata.info(name).ok_or_else(missing)?;
        Ok((file, info))
    }
}

impl TensorShapes for Folder {
    fn location(&self) -> &Path {
        &self.dir
    }

    fn contains(&self, name: &str) -> bool {
        self.routing.contains_key(name)
    }

    fn tensor_names(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        Box::new(self.routing.keys().map(String::as_str))
    }

    fn shape(&self, name: &str) -> Result<Vec<usize>> {
        Ok(self.info(name)?.1.shape.clone())
    }
}

impl TensorSource for Folder {
    fn config_files(&self) -> Result<ConfigFiles> {
        ConfigFiles::read(&self.dir)
    }

    fn tokenizer(&self) -> Result<ImpTokenizer> {
        ImpTokenizer::from_dir(&self.dir)
    }

    fn storage_dtypes(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for file in &self.files {
            for info in file.metadata.tensors().into_values() {
                let elements: usize = info.shape.iter().product();
                *counts
                    .entry(format!("{:?}", info.dtype).to_lowercase())
                    .or_default() += elements;
            }
        }
        counts
    }

    fn load_dense(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let (file, info) = self.info(name)?;
        let stored = match info.dtype {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            other => {
                return Err(Error::tensor(
                    name,
                    format!("unsupported storage dtype {other:?} (expected F32, F16 or BF16)"),
                ))
            }
        };
        let (begin, end) = info.data_offsets;
        let range = file.data_start + begin..file.data_start + end;
        let tensor =
            Tensor::from_raw_buffer(&file.mmap[range.clone()], stored, &info.shape, device)
                .map_err(|e| Error::Checkpoint {
                    path: file.path.clone(),
                    message: format!(
                        "cannot read tensor `{name}` ({})",
                        crate::error::without_backtrace(e)
                    ),
                })?;
        release_pages(&file.mmap, range);
        Ok(tensor.to_dtype(dtype)?)
    }
}

/// The safetensors files of a folder: the shards named by the index, else `model.safetensors`.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index_path = dir.join("model.safetensors.index.json");
    if index_path.is_file() {
        let text = files::read_to_string(&index_path, files::limits::CONFIG_BYTES)?;
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
        // Shards are files of this folder: a name that climbs out of it is refused unopened.
        if let Some(outside) = shards.iter().find(|s| !is_plain_file_name(s)) {
            return Err(Error::Checkpoint {
                path: index_path,
                message: format!(
                    "`weight_map` names `{outside}`, which is not a file name inside the model \
                     folder"
                ),
            });
        }
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

fn is_plain_file_name(name: &str) -> bool {
    let mut components = Path::new(name).components();
    matches!(
        (components.next(), components.next()),
        (Some(std::path::Component::Normal(_)), None)
    )
}
