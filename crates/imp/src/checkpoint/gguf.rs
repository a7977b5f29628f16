//! One-file models: a GGUF file holding every tensor of an Imp checkpoint, each matrix in its
//! part's format, and everything else the engine reads from a model folder (`config.json` and
//! its companions, the tokenizer, `tokenizer_config.json`), plus the chat family, stop ids and
//! image size for other readers.
//!
//! Tensors keep their Hugging Face names, so the naming style, the configuration and the loaders
//! work unchanged. Separately stored q/k/v (or gate/up) matrices stay separate: a block format
//! quantizes each row on its own, so their blocks concatenate into exactly the fused matrix that
//! quantizing at load produces. A block format's zero padding of the input width is stored; the
//! unpadded widths are listed in the metadata. The file is memory-mapped and each tensor copied
//! out once, so loading runs at about the speed of reading the file.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::io::Cursor;
use std::ops::Range;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{ggml_file, GgmlDType};
use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;

use super::{release_pages, TensorSource};
use crate::config::ConfigFiles;
use crate::files;
use crate::names::{Source, TensorShapes};
use crate::quant::{self, Matrix, Part, Quantization};
use crate::tokenizer::ImpTokenizer;
use crate::{Error, Result};
use keys::*;

/// The metadata keys `imp quantize` writes and this reader expects.
pub(crate) mod keys {
    use crate::quant::Part;

    /// Bumped when the layout changes; files of another version are refused.
    pub const FORMAT_VERSION: u32 = 1;

    pub const ARCHITECTURE: &str = "general.architecture";
    pub const NAME: &str = "general.name";
    pub const VERSION: &str = "imp.format_version";
    pub const CONFIG: &str = "imp.config_json";
    pub const GENERATION_CONFIG: &str = "imp.generation_config_json";
    pub const VISION_CONFIG_PATH: &str = "imp.vision_config.path";
    pub const VISION_CONFIG: &str = "imp.vision_config.json";
    /// llama.cpp's key for a Hugging Face `tokenizer.json`.
    pub const TOKENIZER: &str = "tokenizer.huggingface.json";
    pub const TOKENIZER_CONFIG_KEY: &str = "imp.tokenizer_config_json";
    pub const CHAT_FAMILY: &str = "imp.chat_family";
    pub const STOP_TOKEN_IDS: &str = "imp.stop_token_ids";
    pub const IMAGE_SIZE: &str = "imp.image_size";
    pub const VISUAL_TOKENS: &str = "imp.visual_tokens";
    pub const PADDED_NAMES: &str = "imp.padded.names";
    pub const PADDED_WIDTHS: &str = "imp.padded.widths";

    pub fn format_key(part: Part) -> String {
        format!("imp.quantization.{part}")
    }
}

struct StoredTensor {
    format: GgmlDType,
    /// As stored: a block format's input width padded.
    stored_shape: Vec<usize>,
    /// As the model sees it.
    shape: Vec<usize>,
    range: Range<usize>,
}

/// A GGUF file written by `imp quantize` ([`crate::quantize`]), memory-mapped; tensors are
/// read on demand.
pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    metadata: HashMap<String, Value>,
    tensors: HashMap<String, StoredTensor>,
    quantization: Quantization,
}

impl GgufFile {
    /// Maps the file and checks that it is complete and was written by `imp quantize`.
    pub fn open(path: &Path) -> Result<Self> {
        let bad = |message: String| Error::Checkpoint {
            path: path.to_path_buf(),
            message,
        };
        let mmap = files::map(path)?;
        // candle divides by a `general.alignment` of 0 (found by fuzzing).
        let read =
            crate::error::parser_panic_as_error(|| Content::read(&mut Cursor::new(&mmap[..])));
        let content = read
            .map_err(candle_core::Error::Msg)
            .and_then(|r| r)
            .map_err(|e| {
                let e = crate::error::without_backtrace(e);
                bad(format!(
                    "not a model folder, and not a readable GGUF file: it is truncated or of \
                 another format ({e})"
                ))
            })?;
        check_version(&content.metadata).map_err(bad)?;
        let padded = padded_widths(&content.metadata).map_err(bad)?;
        let data_start = content.tensor_data_offset;
        let tensors = content
            .tensor_infos
            .into_iter()
            .map(|(name, info)| {
                let tensor = StoredTensor::locate(&name, &info, data_start, &padded, mmap.len())?;
                Ok((name, tensor))
            })
            .collect::<std::result::Result<_, String>>()
            .map_err(&bad)?;
        check_disjoint(&tensors).map_err(&bad)?;
        let quantization = stored_plan(&content.metadata, bad)?;
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            metadata: content.metadata,
            tensors,
            quantization,
        })
    }

    fn stored(&self, name: &str) -> Result<&StoredTensor> {
        self.tensors.get(name).ok_or_else(|| {
            Error::tensor(
                name,
                format!("missing from the GGUF file {}", self.path.display()),
            )
        })
    }

    fn text(&self, key: &str) -> Result<Option<&str>> {
        self.metadata
            .get(key)
            .map(|value| {
                value
                    .to_string()
                    .map(String::as_str)
                    .map_err(|_| Error::Checkpoint {
                        path: self.path.clone(),
                        message: format!("metadata `{key}` is not a string"),
                    })
            })
            .transpose()
    }

    fn required_text(&self, key: &str) -> Result<&str> {
        self.text(key)?.ok_or_else(|| Error::Checkpoint {
            path: self.path.clone(),
            message: format!("metadata `{key}` is missing"),
        })
    }
}

/// Refuses files of another format version or from another program.
fn check_version(metadata: &HashMap<String, Value>) -> std::result::Result<(), String> {
    match metadata.get(VERSION).map(Value::to_u32) {
        Some(Ok(FORMAT_VERSION)) => Ok(()),
        Some(version) => {
            let version = version.map_or("unreadable".into(), |v| v.to_string());
            Err(format!(
                "was written by an incompatible imp (format version {version}; this imp reads \
                 version {FORMAT_VERSION}); convert the Hugging Face folder again with `imp \
                 quantize`"
            ))
        }
        None => {
            let architecture = metadata
                .get(ARCHITECTURE)
                .and_then(|v| v.to_string().ok())
                .map_or("none".into(), |a| format!("`{a}`"));
            Err(format!(
                "is a GGUF file from another program (architecture {architecture}, no \
                 `{VERSION}`): imp reads only GGUF files written by `imp quantize --model DIR \
                 --quant Q --out FILE.gguf`, which carry its configuration and tokenizer"
            ))
        }
    }
}

/// The model's input width of each matrix stored with a block format's zero padding.
fn padded_widths(
    metadata: &HashMap<String, Value>,
) -> std::result::Result<HashMap<String, usize>, String> {
    let malformed = || format!("metadata `{PADDED_NAMES}` is malformed");
    let array = |key: &str| match metadata.get(key) {
        Some(Value::Array(values)) => Ok(&values[..]),
        Some(_) => Err(malformed()),
        None => Ok(&[][..]),
    };
    let (names, widths) = (array(PADDED_NAMES)?, array(PADDED_WIDTHS)?);
    if names.len() != widths.len() {
        return Err(malformed());
    }
    names
        .iter()
        .zip(widths)
        .map(|(name, width)| match (name.to_string(), width.to_u32()) {
            (Ok(name), Ok(width)) => Ok((name.clone(), width as usize)),
            _ => Err(malformed()),
        })
        .collect()
}

/// The number of values, `None` if any product of the dimensions overflows: with a zero among
/// them the count is 0 while the strides of the others still overflow (found by fuzzing).
fn checked_product(dims: &[usize]) -> Option<usize> {
    let nonzero = dims
        .iter()
        .filter(|&&d| d != 0)
        .try_fold(1usize, |n, &d| n.checked_mul(d))?;
    Some(if dims.contains(&0) { 0 } else { nonzero })
}

/// Each tensor owns its bytes: two sharing a range would make one file's weights appear twice.
fn check_disjoint(tensors: &HashMap<String, StoredTensor>) -> std::result::Result<(), String> {
    let mut ranges: Vec<(&str, &Range<usize>)> = tensors
        .iter()
        .filter(|(_, t)| !t.range.is_empty())
        .map(|(name, t)| (name.as_str(), &t.range))
        .collect();
    ranges.sort_by_key(|(name, range)| (range.start, *name));
    for ((first, a), (second, b)) in ranges.iter().zip(ranges.iter().skip(1)) {
        if b.start < a.end {
            return Err(format!(
                "tensors `{first}` (bytes {a:?}) and `{second}` (bytes {b:?}) overlap"
            ));
        }
    }
    Ok(())
}

/// The format each part's matrices were written in.
fn stored_plan(
    metadata: &HashMap<String, Value>,
    bad: impl Fn(String) -> Error,
) -> Result<Quantization> {
    let mut quantization = Quantization::default();
    for part in Part::ALL {
        let key = format_key(part);
        let name = metadata
            .get(&key)
            .and_then(|v| v.to_string().ok())
            .ok_or_else(|| bad(format!("metadata `{key}` is missing")))?;
        let format = Some(quant::parse_format(name)?);
        match part {
            Part::Vision => quantization.vision = format,
            Part::Projector => quantization.projector = format,
            Part::Llm => quantization.llm = format,
        }
    }
    Ok(quantization)
}

impl StoredTensor {
    /// Where tensor `name` lies in a file of `file_len` bytes, checked to be whole blocks
    /// inside the file.
    fn locate(
        name: &str,
        info: &candle_core::quantized::gguf_file::TensorInfo,
        data_start: u64,
        padded: &HashMap<String, usize>,
        file_len: usize,
    ) -> std::result::Result<Self, String> {
        let format = info.ggml_dtype;
        let dims = info.shape.dims();
        let too_large = || format!("tensor `{name}` has the impossible shape {dims:?}");
        let elements = checked_product(dims).ok_or_else(too_large)?;
        if !elements.is_multiple_of(format.block_size()) {
            return Err(format!(
                "tensor `{name}` has {elements} values, not whole {} blocks",
                quant::format_name(format)
            ));
        }
        let bytes = (elements / format.block_size())
            .checked_mul(format.type_size())
            .ok_or_else(too_large)?;
        let start = data_start.saturating_add(info.offset);
        let end = start.saturating_add(bytes as u64);
        if end > file_len as u64 {
            return Err(format!(
                "is truncated: tensor `{name}` ends at byte {end} but the file has {file_len} bytes"
            ));
        }
        let stored_shape = dims.to_vec();
        let mut shape = stored_shape.clone();
        if let (Some(&width), Some(last)) = (padded.get(name), shape.last_mut()) {
            // Padding only ever widens what the model sees into what is stored.
            if width > *last {
                return Err(format!(
                    "tensor `{name}` is listed in `{PADDED_NAMES}` with width {width}, wider \
                     than the {last} stored"
                ));
            }
            *last = width;
        }
        Ok(Self {
            format,
            stored_shape,
            shape,
            range: start as usize..end as usize,
        })
    }
}

impl TensorShapes for GgufFile {
    fn location(&self) -> &Path {
        &self.path
    }

    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    fn tensor_names(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        Box::new(self.tensors.keys().map(String::as_str))
    }

    fn shape(&self, name: &str) -> Result<Vec<usize>> {
        Ok(self.stored(name)?.shape.clone())
    }
}

impl TensorSource for GgufFile {
    fn storage_dtypes(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for tensor in self.tensors.values() {
            *counts
                .entry(quant::format_name(tensor.format).to_owned())
                .or_default() += tensor.shape.iter().product::<usize>();
        }
        counts
    }

    /// The embedded JSON files, named as inside the file's model folder.
    fn config_files(&self) -> Result<ConfigFiles> {
        let vision = match (self.text(VISION_CONFIG_PATH)?, self.text(VISION_CONFIG)?) {
            (Some(name), Some(text)) => Some((name.to_owned(), text.to_owned())),
            _ => None,
        };
        Ok(ConfigFiles {
            root: self.path.clone(),
            config: self.required_text(CONFIG)?.to_owned(),
            generation: self.text(GENERATION_CONFIG)?.map(str::to_owned),
            vision,
        })
    }

    fn tokenizer(&self) -> Result<ImpTokenizer> {
        ImpTokenizer::from_json(
            self.required_text(TOKENIZER)?,
            self.text(TOKENIZER_CONFIG_KEY)?,
        )
    }

    /// A tensor stored in a float format, converted to `dtype`.
    fn load_dense(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let stored = self.stored(name)?;
        let Some(dense) = quant::float_dtype(stored.format) else {
            return Err(Error::tensor(
                name,
                format!(
                    "is stored in the block format {} where imp expects a dense tensor; {} does \
                     not match this imp's layout",
                    quant::format_name(stored.format),
                    self.path.display()
                ),
            ));
        };
        let bytes = &self.mmap[stored.range.clone()];
        let tensor = Tensor::from_raw_buffer(bytes, dense, &stored.shape, device)?;
        release_pages(&self.mmap, stored.range.clone());
        Ok(tensor.to_dtype(dtype)?)
    }

    /// A matrix `[out, width]` as stored, the rows of several tensors concatenated; the file
    /// decides the format.
    fn matrix(
        &self,
        source: &Source,
        out: usize,
        width: usize,
        _format: Option<GgmlDType>,
        device: &Device,
    ) -> Result<Option<Matrix>> {
        let names = source.names();
        let parts = names
            .iter()
            .map(|name| self.stored(name))
            .collect::<Result<Vec<_>>>()?;
        let first = parts[0];
        let mismatch = || {
            Error::tensor(
                source.to_string(),
                format!(
                    "is stored as {} {:?}, expected [{out}, {width}]",
                    quant::format_name(first.format),
                    first.stored_shape
                ),
            )
        };
        let matrices = parts.iter().all(|p| {
            p.format == first.format
                && p.shape.len() == 2
                && p.stored_shape.len() == 2
                && p.shape[1] == first.shape[1]
                && p.stored_shape[1] == first.stored_shape[1]
        });
        if !matrices {
            return Err(mismatch());
        }
        let rows: usize = parts.iter().map(|p| p.shape[0]).sum();
        let stored_width = first.stored_shape[1];
        if [rows, first.shape[1]] != [out, width]
            || stored_width != quant::padded_width(width, first.format)
        {
            return Err(mismatch());
        }
        let bytes: Cow<[u8]> = match &parts[..] {
            [one] => Cow::Borrowed(&self.mmap[one.range.clone()]),
            _ => Cow::Owned(
                parts
                    .iter()
                    .map(|p| &self.mmap[p.range.clone()])
                    .collect::<Vec<_>>()
                    .concat(),
            ),
        };
        let matrix = match quant::float_dtype(first.format) {
            Some(dense) => Matrix::Dense(Tensor::from_raw_buffer(
                &bytes,
                dense,
                &[rows, width],
                device,
            )?),
            None => Matrix::Blocks(ggml_file::qtensor_from_ggml(
                first.format,
                &bytes,
                vec![rows, stored_width],
                device,
            )?),
        };
        for part in parts {
            release_pages(&self.mmap, part.range.clone());
        }
        Ok(Some(matrix))
    }

    fn stored_quantization(&self) -> Option<Quantization> {
        Some(self.quantization)
    }
}
