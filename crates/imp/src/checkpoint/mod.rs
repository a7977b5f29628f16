//! Where weights come from: a [`TensorSource`] per storage kind, and [`Weights`], which turns
//! a source's tensors into the building blocks of [`crate::nn`].
//!
//! - [`safetensors`]: a Hugging Face folder (`model.safetensors` or the shards listed by
//!   `model.safetensors.index.json`, in f32, f16 or bf16 storage);
//! - [`gguf`]: one GGUF file written by `imp quantize`.
//!
//! Both are memory-mapped. Each tensor is copied out of the mapping and its pages are then
//! released, so a loaded model holds one copy of its weights, not the mapped file as well.
//! Other sources (random weights drawn in memory for benchmarks, in `imp-tools`) implement the
//! trait from outside this crate.

pub mod gguf;
pub mod safetensors;
mod weights;

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;

use crate::config::ConfigFiles;
use crate::names::{Source, TensorShapes};
use crate::quant::{Matrix, Quantization};
use crate::tokenizer::ImpTokenizer;
use crate::{Error, Result};

pub use gguf::GgufFile;
pub use safetensors::Folder;
pub use weights::Weights;

/// The tensors of one model and the files that describe it, read on demand.
pub trait TensorSource: TensorShapes + Send + Sync {
    /// The JSON configuration files (`config.json` and its companions).
    fn config_files(&self) -> Result<ConfigFiles>;

    fn tokenizer(&self) -> Result<ImpTokenizer>;

    /// Number of stored elements per storage format, for reporting.
    fn storage_dtypes(&self) -> BTreeMap<String, usize>;

    /// One stored tensor, as dense values in `dtype`.
    fn load_dense(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor>;

    /// The plan a pre-quantized source was written with; its matrices are used as stored and
    /// no other plan applies.
    fn stored_quantization(&self) -> Option<Quantization> {
        None
    }

    /// A matrix `[out, width]` that the source provides itself: a pre-quantized file's as
    /// stored, or one made directly in `format`. `None`: the loader reads the dense tensor and
    /// converts it.
    fn matrix(
        &self,
        _source: &Source,
        _out: usize,
        _width: usize,
        _format: Option<GgmlDType>,
        _device: &Device,
    ) -> Result<Option<Matrix>> {
        Ok(None)
    }
}

impl dyn TensorSource + '_ {
    /// Loads one dense tensor (or rows of several, concatenated) in `dtype`, checking its shape.
    pub fn load(
        &self,
        source: &Source,
        shape: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let tensor = match source {
            Source::Tensor(name) => self.load_dense(name, dtype, device)?,
            Source::Rows(names) => {
                let parts = names
                    .iter()
                    .map(|name| self.load_dense(name, dtype, device))
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
}

/// Opens a model folder or a `.gguf` file.
pub fn open(path: &Path) -> Result<Box<dyn TensorSource>> {
    if path.is_dir() {
        Ok(Box::new(Folder::open(path)?))
    } else if path.is_file() {
        Ok(Box::new(GgufFile::open(path)?))
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

/// Drops the mapped pages of bytes already copied out; they would otherwise stay resident
/// beside the copy until the whole checkpoint is unmapped.
pub(crate) fn release_pages(mmap: &Mmap, range: std::ops::Range<usize>) {
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
