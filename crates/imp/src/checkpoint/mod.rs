//! Reads a model's tensors: from a Hugging Face folder (`model.safetensors` or shards listed by
//! `model.safetensors.index.json`, in f32, f16 or bf16 storage) or from one GGUF file written by
//! `imp quantize` ([`gguf`]), both memory-mapped; or random weights drawn in memory
//! ([`SyntheticCheckpoint`]).
//!
//! Each tensor is copied out of the mapping and its pages are then released, so a loaded model
//! holds one copy of its weights, not the mapped file as well. [`Weights`] turns the tensors into
//! model building blocks, converting each matrix to the format of the quantization plan as soon
//! as it is read.

pub mod gguf;
pub mod names;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::{Dtype, SafeTensors};

use crate::config::ConfigFiles;
use crate::linear::{Embedding, Linear};
use crate::quant::{self, Matrix, Part, Quantization, WeightGroup};
use crate::synthetic::SyntheticCheckpoint;
use crate::tokenizer::ImpTokenizer;
use crate::{Error, Result};

pub use gguf::GgufFile;
pub use names::{NamingStyle, Source};

struct WeightFile {
    path: PathBuf,
    mmap: Mmap,
    /// Offset of the data section (after the 8-byte length and the JSON header).
    data_start: usize,
    metadata: Metadata,
}

/// The tensors of one model, read on demand.
pub enum Checkpoint {
    /// A Hugging Face folder of safetensors files.
    Folder(Folder),
    /// One GGUF file written by `imp quantize`.
    Gguf(GgufFile),
    /// Random weights with a released model's shapes, drawn in memory (`imp bench`).
    Synthetic(SyntheticCheckpoint),
}

impl Checkpoint {
    /// Opens a model folder or a `.gguf` file.
    pub fn open(path: &Path) -> Result<Self> {
        if path.is_dir() {
            Ok(Self::Folder(Folder::open(path)?))
        } else if path.is_file() {
            Ok(Self::Gguf(GgufFile::open(path)?))
        } else {
            Err(Error::io(
                path,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such model folder or .gguf file",
                ),
            ))
        }
    }

    /// The folder or file, for messages.
    pub fn path(&self) -> &Path {
        match self {
            Self::Folder(folder) => &folder.dir,
            Self::Gguf(file) => file.path(),
            Self::Synthetic(synthetic) => synthetic.label(),
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        match self {
            Self::Folder(folder) => folder.routing.contains_key(name),
            Self::Gguf(file) => file.contains(name),
            Self::Synthetic(synthetic) => synthetic.contains(name),
        }
    }

    pub fn tensor_names(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        match self {
            Self::Folder(folder) => Box::new(folder.routing.keys().map(String::as_str)),
            Self::Gguf(file) => Box::new(file.tensor_names()),
            Self::Synthetic(synthetic) => Box::new(synthetic.tensor_names()),
        }
    }

    /// The shape the model sees (a GGUF block format's zero padding excluded).
    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        match self {
            Self::Folder(folder) => Ok(folder.info(name)?.1.shape.clone()),
            Self::Gguf(file) => file.shape(name),
            Self::Synthetic(synthetic) => synthetic.shape(name),
        }
    }

    /// Number of stored elements per storage format, for reporting.
    pub fn storage_dtypes(&self) -> BTreeMap<String, usize> {
        match self {
            Self::Folder(folder) => folder.storage_dtypes(),
            Self::Gguf(file) => file.storage_dtypes(),
            Self::Synthetic(synthetic) => synthetic.storage_dtypes(),
        }
    }

    /// The JSON configuration files: from the folder, or embedded in the GGUF file.
    pub fn config_files(&self) -> Result<ConfigFiles> {
        match self {
            Self::Folder(folder) => ConfigFiles::read(&folder.dir),
            Self::Gguf(file) => file.config_files(),
            Self::Synthetic(synthetic) => Ok(synthetic.config_files()),
        }
    }

    /// The tokenizer, from the folder's files or the GGUF file's copy.
    pub fn tokenizer(&self) -> Result<ImpTokenizer> {
        match self {
            Self::Folder(folder) => ImpTokenizer::from_dir(&folder.dir),
            Self::Gguf(file) => file.tokenizer(),
            Self::Synthetic(synthetic) => synthetic.tokenizer(),
        }
    }

    /// Loads one dense tensor (or rows of several, concatenated) in `dtype`, checking its shape.
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
        match self {
            Self::Folder(folder) => folder.load_one(name, dtype, device),
            Self::Gguf(file) => file.load_dense(name, dtype, device),
            Self::Synthetic(synthetic) => synthetic.load_dense(name, dtype, device),
        }
    }
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
    fn open(dir: &Path) -> Result<Self> {
        let mut files = Vec::new();
        let mut routing = HashMap::new();
        for path in weight_files(dir)? {
            let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
            // Safety: the mapping is only read. A file truncated or rewritten while mapped is
            // outside what any mmap-based loader can guard against.
            let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
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

    fn load_one(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
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
                    message: format!("cannot read tensor `{name}` ({e})"),
                })?;
        release_pages(&file.mmap, range);
        Ok(tensor.to_dtype(dtype)?)
    }
}

/// Drops the mapped pages of bytes already copied out; they would otherwise stay resident
/// beside the copy until the whole checkpoint is unmapped.
fn release_pages(mmap: &Mmap, range: std::ops::Range<usize>) {
    #[cfg(unix)]
    {
        // Safety: the mapping is read-only and file-backed, so dropped pages are read back
        // from the file if touched again; no data is lost. Failure only costs memory.
        let _ = unsafe {
            mmap.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                range.start,
                range.len(),
            )
        };
    }
    #[cfg(not(unix))]
    let _ = (mmap, range);
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

/// Loads named weights into model building blocks, in one compute dtype on one device, with
/// each part's matrices in the format the quantization plan gives it.
pub struct Weights<'a> {
    checkpoint: &'a Checkpoint,
    style: NamingStyle,
    pub dtype: DType,
    pub device: Device,
    quantization: Quantization,
    /// How each matrix and the other tensors were stored, for `imp info`.
    stored: RefCell<Vec<WeightGroup>>,
}

impl<'a> Weights<'a> {
    /// `quantization` applies to a folder; a GGUF file's tensors are used as stored.
    pub fn new(
        checkpoint: &'a Checkpoint,
        style: NamingStyle,
        dtype: DType,
        device: Device,
        quantization: Quantization,
    ) -> Result<Self> {
        if matches!(checkpoint, Checkpoint::Gguf(_)) && !quantization.is_none() {
            return Err(Error::InvalidArgument(format!(
                "{} is already quantized and is used as stored; a quantization plan ({}) \
                 applies to a Hugging Face folder",
                checkpoint.path().display(),
                quantization
            )));
        }
        Ok(Self {
            checkpoint,
            style,
            dtype,
            device,
            quantization,
            stored: RefCell::default(),
        })
    }

    /// How every weight read so far is stored, grouped: by part, the matrices first.
    pub fn into_stored(self) -> Vec<WeightGroup> {
        let mut groups = self.stored.into_inner();
        groups.sort_by_key(|g| (g.part, g.width == 0));
        groups
    }

    /// A dense tensor in the compute dtype.
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let tensor = self.checkpoint.load(
            &Source::Tensor(name.to_owned()),
            shape,
            self.dtype,
            &self.device,
        )?;
        self.record_dense(name, &tensor);
        Ok(tensor)
    }

    /// A linear layer with weight `[out, in]` and, where named, bias `[out]`.
    pub fn linear(
        &self,
        names: &names::LinearNames,
        out_features: usize,
        in_features: usize,
    ) -> Result<Linear> {
        let weight = self.matrix(&names.weight, out_features, in_features)?;
        let bias = names
            .bias
            .as_ref()
            .map(|b| {
                let bias = self
                    .checkpoint
                    .load(b, &[out_features], self.dtype, &self.device)?;
                self.record_dense(&b.to_string(), &bias);
                Ok::<_, Error>(bias)
            })
            .transpose()?;
        Linear::from_matrix(weight, in_features, bias)
    }

    /// The token-embedding table `[vocab, hidden]`, stored like the language model's matrices.
    pub fn embedding(&self, name: &str, vocab: usize, hidden: usize) -> Result<Embedding> {
        let table = self.matrix(&Source::Tensor(name.to_owned()), vocab, hidden)?;
        Ok(Embedding::new(table, hidden, self.dtype))
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

    /// A matrix `[out, in]` in its part's format, converted right after it is read so that
    /// the f32 copy is gone before the next matrix is read.
    fn matrix(&self, source: &Source, out: usize, width: usize) -> Result<Matrix> {
        let names = source.names();
        let part = self.style.part_of(names[0]);
        let matrix = match (self.checkpoint, self.quantization.format(part)) {
            (Checkpoint::Gguf(file), _) => {
                let matrix = file.matrix(source, out, width, &self.device)?;
                let format = matrix.format()?;
                if file.quantization().format(part) != Some(format) {
                    return Err(Error::tensor(
                        source.to_string(),
                        format!(
                            "is stored as {} although the file declares {}",
                            quant::format_name(format),
                            file.quantization()
                        ),
                    ));
                }
                matrix
            }
            (Checkpoint::Synthetic(synthetic), Some(format)) => {
                synthetic.matrix(source, out, width, format, &self.device)?
            }
            (_, None) => Matrix::Dense(self.checkpoint.load(
                source,
                &[out, width],
                self.dtype,
                &self.device,
            )?),
            (_, Some(format)) => {
                let weight =
                    self.checkpoint
                        .load(source, &[out, width], DType::F32, &self.device)?;
                Matrix::convert(&weight, format)?
            }
        };
        let prefix = match part {
            Part::Vision => self.style.vision_prefix(),
            Part::Projector | Part::Llm => String::new(),
        };
        WeightGroup::merge(
            &mut self.stored.borrow_mut(),
            WeightGroup {
                part,
                name: quant::group_label(&names, &prefix),
                format: quant::format_name(matrix.format()?).to_owned(),
                tensors: 1,
                width,
                stored_width: matrix.stored_width()?,
                values: out * width,
                bytes: matrix.size_in_bytes(),
            },
        );
        Ok(matrix)
    }

    /// Tensors that are not matrices are one group per part.
    fn record_dense(&self, name: &str, tensor: &Tensor) {
        let part = self.style.part_of(name);
        WeightGroup::merge(
            &mut self.stored.borrow_mut(),
            WeightGroup {
                part,
                name: part.other_tensors().into(),
                format: format!("{:?}", tensor.dtype()).to_lowercase(),
                tensors: 1,
                width: 0,
                stored_width: 0,
                values: tensor.elem_count(),
                bytes: tensor.elem_count() * tensor.dtype().size_in_bytes(),
            },
        );
    }
}
