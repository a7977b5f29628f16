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
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Cursor};
use std::ops::Range;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Content, Value};
use candle_core::quantized::{ggml_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;

use super::{release_pages, Checkpoint, Source};
use crate::config::{ConfigFiles, ImpConfig};
use crate::model::SpecialTokens;
use crate::quant::{self, Matrix, Part, Quantization};
use crate::tokenizer::{ImpTokenizer, TOKENIZER_CONFIG};
use crate::{Error, Result};

/// Bumped when the layout changes; files of another version are refused.
const FORMAT_VERSION: u32 = 1;

const ARCHITECTURE: &str = "general.architecture";
const NAME: &str = "general.name";
const VERSION: &str = "imp.format_version";
const CONFIG: &str = "imp.config_json";
const GENERATION_CONFIG: &str = "imp.generation_config_json";
const VISION_CONFIG_PATH: &str = "imp.vision_config.path";
const VISION_CONFIG: &str = "imp.vision_config.json";
/// llama.cpp's key for a Hugging Face `tokenizer.json`.
const TOKENIZER: &str = "tokenizer.huggingface.json";
const TOKENIZER_CONFIG_KEY: &str = "imp.tokenizer_config_json";
const CHAT_FAMILY: &str = "imp.chat_family";
const STOP_TOKEN_IDS: &str = "imp.stop_token_ids";
const IMAGE_SIZE: &str = "imp.image_size";
const VISUAL_TOKENS: &str = "imp.visual_tokens";
const PADDED_NAMES: &str = "imp.padded.names";
const PADDED_WIDTHS: &str = "imp.padded.widths";

fn format_key(part: Part) -> String {
    format!("imp.quantization.{part}")
}

struct StoredTensor {
    format: GgmlDType,
    /// As stored: a block format's input width padded.
    stored_shape: Vec<usize>,
    /// As the model sees it.
    shape: Vec<usize>,
    range: Range<usize>,
}

/// A GGUF file written by [`write`], memory-mapped; tensors are read on demand.
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
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // Safety: the mapping is only read. A file truncated or rewritten while mapped is
        // outside what any mmap-based loader can guard against.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let content = Content::read(&mut Cursor::new(&mmap[..])).map_err(|e| {
            bad(format!(
                "not a model folder, and not a readable GGUF file: it is truncated or of \
                 another format ({e})"
            ))
        })?;
        let metadata = content.metadata;
        match metadata.get(VERSION).map(Value::to_u32) {
            Some(Ok(FORMAT_VERSION)) => {}
            Some(version) => {
                let version = version.map_or("unreadable".into(), |v| v.to_string());
                return Err(bad(format!(
                    "was written by an incompatible imp (format version {version}; this imp \
                     reads version {FORMAT_VERSION}); convert the Hugging Face folder again with \
                     `imp quantize`"
                )));
            }
            None => {
                let architecture = metadata
                    .get(ARCHITECTURE)
                    .and_then(|v| v.to_string().ok())
                    .map_or("none".into(), |a| format!("`{a}`"));
                return Err(bad(format!(
                    "is a GGUF file from another program (architecture {architecture}, no \
                     `{VERSION}`): imp reads only GGUF files written by `imp quantize --model DIR \
                     --quant Q --out FILE.gguf`, which carry its configuration and tokenizer"
                )));
            }
        }
        let malformed = || bad(format!("metadata `{PADDED_NAMES}` is malformed"));
        let array = |key: &str| match metadata.get(key) {
            Some(Value::Array(values)) => Ok(&values[..]),
            Some(_) => Err(malformed()),
            None => Ok(&[][..]),
        };
        let (names, widths) = (array(PADDED_NAMES)?, array(PADDED_WIDTHS)?);
        if names.len() != widths.len() {
            return Err(malformed());
        }
        let mut padded = HashMap::new();
        for (name, width) in names.iter().zip(widths) {
            match (name.to_string(), width.to_u32()) {
                (Ok(name), Ok(width)) => padded.insert(name.clone(), width as usize),
                _ => return Err(malformed()),
            };
        }

        let mut tensors = HashMap::new();
        for (name, info) in content.tensor_infos {
            let format = info.ggml_dtype;
            let elements = info.shape.elem_count();
            if elements % format.block_size() != 0 {
                return Err(bad(format!(
                    "tensor `{name}` has {elements} values, not whole {} blocks",
                    quant::format_name(format)
                )));
            }
            let start = content.tensor_data_offset.saturating_add(info.offset);
            let end =
                start.saturating_add((elements / format.block_size() * format.type_size()) as u64);
            if end > mmap.len() as u64 {
                return Err(bad(format!(
                    "is truncated: tensor `{name}` ends at byte {end} but the file has {} bytes",
                    mmap.len()
                )));
            }
            let range = start as usize..end as usize;
            let stored_shape = info.shape.dims().to_vec();
            let mut shape = stored_shape.clone();
            if let (Some(&width), Some(last)) = (padded.get(&name), shape.last_mut()) {
                *last = width;
            }
            tensors.insert(
                name,
                StoredTensor {
                    format,
                    stored_shape,
                    shape,
                    range,
                },
            );
        }
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
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            metadata,
            tensors,
            quantization,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The format each part's matrices are stored in.
    pub fn quantization(&self) -> Quantization {
        self.quantization
    }

    pub(super) fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub(super) fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    fn stored(&self, name: &str) -> Result<&StoredTensor> {
        self.tensors.get(name).ok_or_else(|| {
            Error::tensor(
                name,
                format!("missing from the GGUF file {}", self.path.display()),
            )
        })
    }

    pub(super) fn shape(&self, name: &str) -> Result<Vec<usize>> {
        Ok(self.stored(name)?.shape.clone())
    }

    pub(super) fn storage_dtypes(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for tensor in self.tensors.values() {
            *counts
                .entry(quant::format_name(tensor.format).to_owned())
                .or_default() += tensor.shape.iter().product::<usize>();
        }
        counts
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

    /// The embedded JSON files, named as inside the file's model folder.
    pub(super) fn config_files(&self) -> Result<ConfigFiles> {
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

    pub(super) fn tokenizer(&self) -> Result<ImpTokenizer> {
        ImpTokenizer::from_json(
            self.required_text(TOKENIZER)?,
            self.text(TOKENIZER_CONFIG_KEY)?,
        )
    }

    /// A tensor stored in a float format, converted to `dtype`.
    pub(super) fn load_dense(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
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

    /// A matrix `[out, width]` as stored, the rows of several tensors concatenated.
    pub(super) fn matrix(
        &self,
        source: &Source,
        out: usize,
        width: usize,
        device: &Device,
    ) -> Result<Matrix> {
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
        Ok(matrix)
    }
}

/// Converts the model folder `dir` into one GGUF file `out`: each matrix in its part's format
/// of `plan` (every part needs one), the other tensors in f32. `on_progress(done, total, what)`
/// is called before each step. Returns the size of the file written.
pub fn write(
    dir: &Path,
    plan: &Quantization,
    out: &Path,
    on_progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<u64> {
    if let Some(part) = Part::ALL.into_iter().find(|&p| plan.format(p).is_none()) {
        return Err(Error::InvalidArgument(format!(
            "a GGUF file needs a format for every part, and the {part} has none (--quant sets \
             all parts)"
        )));
    }
    let checkpoint = Checkpoint::open(dir)?;
    if let Checkpoint::Gguf(_) = checkpoint {
        return Err(Error::InvalidArgument(format!(
            "{} is already a GGUF file; quantize from the Hugging Face folder",
            dir.display()
        )));
    }
    let files = checkpoint.config_files()?;
    let config = ImpConfig::load(&files, &checkpoint)?;
    let tokenizer = checkpoint.tokenizer()?;
    let special = SpecialTokens::add_to(&mut tokenizer.clone(), &config)?;
    let path = dir.join(TOKENIZER_CONFIG);
    let tokenizer_config = path
        .is_file()
        .then(|| std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e)))
        .transpose()?;

    let style = config.style;
    let matrices: HashSet<String> = style
        .matrix_names(config.decoder.num_layers, config.vision.num_layers)
        .into_iter()
        .collect();
    let mut names: Vec<&str> = checkpoint.tensor_names().collect();
    names.sort_unstable();
    let total = names.len() + 1;
    let mut tensors = Vec::with_capacity(names.len());
    let mut padded = Vec::new();
    for (done, &name) in names.iter().enumerate() {
        on_progress(done, total, name);
        let shape = checkpoint.shape(name)?;
        let source = Source::Tensor(name.to_owned());
        let tensor = checkpoint.load(&source, &shape, DType::F32, &Device::Cpu)?;
        let stored = if matrices.contains(name) {
            let format = plan.format(style.part_of(name)).expect("checked above");
            let matrix = Matrix::convert(&tensor, format)?;
            if matrix.stored_width()? != shape[1] {
                padded.push((name, shape[1]));
            }
            matrix.into_qtensor()?
        } else {
            QTensor::quantize(&tensor, GgmlDType::F32)?
        };
        tensors.push((name, stored));
    }

    let string = |s: &str| Value::String(s.to_owned());
    let ids = |ids: &[u32]| Value::Array(ids.iter().map(|&id| Value::U32(id)).collect());
    let model_name = dir
        .canonicalize()
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let mut metadata = vec![
        (ARCHITECTURE.to_owned(), string("imp")),
        (NAME.to_owned(), string(&model_name)),
        (VERSION.to_owned(), Value::U32(FORMAT_VERSION)),
        (CONFIG.to_owned(), string(&files.config)),
        (TOKENIZER.to_owned(), string(&tokenizer.to_json()?)),
        (
            CHAT_FAMILY.to_owned(),
            string(&format!("{:?}", config.decoder.family).to_lowercase()),
        ),
        (STOP_TOKEN_IDS.to_owned(), ids(&special.stop)),
        (
            IMAGE_SIZE.to_owned(),
            Value::U32(config.vision.image_size as u32),
        ),
        (
            VISUAL_TOKENS.to_owned(),
            Value::U32(config.vision.num_patches() as u32),
        ),
        (
            PADDED_NAMES.to_owned(),
            Value::Array(padded.iter().map(|(name, _)| string(name)).collect()),
        ),
        (
            PADDED_WIDTHS.to_owned(),
            Value::Array(padded.iter().map(|&(_, w)| Value::U32(w as u32)).collect()),
        ),
    ];
    for part in Part::ALL {
        let format = plan.format(part).expect("checked above");
        metadata.push((format_key(part), string(quant::format_name(format))));
    }
    if let Some(text) = &files.generation {
        metadata.push((GENERATION_CONFIG.to_owned(), string(text)));
    }
    if let Some((name, text)) = &files.vision {
        metadata.push((VISION_CONFIG_PATH.to_owned(), string(name)));
        metadata.push((VISION_CONFIG.to_owned(), string(text)));
    }
    if let Some(text) = &tokenizer_config {
        metadata.push((TOKENIZER_CONFIG_KEY.to_owned(), string(text)));
    }

    on_progress(names.len(), total, &out.display().to_string());
    // Written beside the target and renamed, so that a failed run never leaves a file that
    // looks complete.
    let partial = out.with_extension("gguf.partial");
    let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (*n, t)).collect();
    let size = write_file(&partial, &metadata, &tensors).inspect_err(|_| {
        let _ = std::fs::remove_file(&partial);
    })?;
    std::fs::rename(&partial, out).map_err(|e| Error::io(out, e))?;
    on_progress(total, total, "done");
    Ok(size)
}

/// Writes and syncs one GGUF file, returning its size.
fn write_file(
    path: &Path,
    metadata: &[(&str, &Value)],
    tensors: &[(&str, &QTensor)],
) -> Result<u64> {
    let file = File::create(path).map_err(|e| Error::io(path, e))?;
    let mut writer = BufWriter::new(file);
    gguf_file::write(&mut writer, metadata, tensors).map_err(|e| Error::Checkpoint {
        path: path.to_path_buf(),
        message: format!("cannot write the GGUF file ({e})"),
    })?;
    let file = writer
        .into_inner()
        .map_err(|e| Error::io(path, e.into_error()))?;
    file.sync_all().map_err(|e| Error::io(path, e))?;
    Ok(file.metadata().map_err(|e| Error::io(path, e))?.len())
}
