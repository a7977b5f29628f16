//! `imp quantize`: converts a Hugging Face folder into one GGUF file that
//! [`checkpoint::gguf`] reads back (its layout is described there).

use std::collections::HashSet;
use std::io::{BufWriter, Write};
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device};

use crate::checkpoint::{self, gguf::keys::*};
use crate::config::{ConfigFiles, ImpConfig};
use crate::files::{self, AtomicFile, Overwrite};
use crate::names::Source;
use crate::quant::{self, Matrix, Part, Quantization};
use crate::template::SpecialTokens;
use crate::tokenizer::TOKENIZER_CONFIG;
use crate::{Error, Result};

/// Converts the model folder `dir` into one GGUF file `out`: each matrix in its part's format
/// of `plan` (every part needs one), the other tensors in f32. `on_progress(done, total, what)`
/// is called before each step. Returns the size of the file written.
pub fn write_gguf(
    dir: &Path,
    plan: &Quantization,
    out: &Path,
    overwrite: Overwrite,
    on_progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<u64> {
    check_gguf_output(dir, out, overwrite)?;
    if let Some(part) = Part::ALL.into_iter().find(|&p| plan.format(p).is_none()) {
        return Err(Error::InvalidArgument(format!(
            "a GGUF file needs a format for every part, and the {part} has none (--quant sets \
             all parts)"
        )));
    }
    let checkpoint = checkpoint::open(dir)?;
    if checkpoint.stored_quantization().is_some() {
        return Err(Error::InvalidArgument(format!(
            "{} is already a GGUF file; quantize from the Hugging Face folder",
            dir.display()
        )));
    }
    let files = checkpoint.config_files()?;
    let config = ImpConfig::load(&files, checkpoint.as_ref())?;
    let mut metadata = metadata(dir, checkpoint.as_ref(), &files, &config, plan)?;

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
    metadata.push((
        PADDED_NAMES.to_owned(),
        Value::Array(padded.iter().map(|(name, _)| string(name)).collect()),
    ));
    metadata.push((
        PADDED_WIDTHS.to_owned(),
        Value::Array(padded.iter().map(|&(_, w)| Value::U32(w as u32)).collect()),
    ));

    on_progress(names.len(), total, &out.display().to_string());
    let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (*n, t)).collect();
    let size = write_file(out, overwrite, &metadata, &tensors)?;
    on_progress(total, total, "done");
    Ok(size)
}

/// Refused before any work: an output that is not a regular file, an existing one without
/// `overwrite`, and any file of the model folder being read.
fn check_gguf_output(dir: &Path, out: &Path, overwrite: Overwrite) -> Result<()> {
    let inputs: Vec<std::path::PathBuf> = if dir.is_dir() {
        std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .collect()
    } else {
        vec![dir.to_path_buf()]
    };
    let inputs: Vec<&Path> = inputs.iter().map(|p| p.as_path()).collect();
    files::check_output(out, &inputs, overwrite)
}

/// What the file says besides its tensors and their padding: the folder's JSON files and
/// tokenizer, the quantization plan, and the chat family, stop ids and image size for other
/// readers. Read before any tensor is converted, so that a bad folder fails fast.
fn metadata(
    dir: &Path,
    checkpoint: &dyn checkpoint::TensorSource,
    files: &ConfigFiles,
    config: &ImpConfig,
    plan: &Quantization,
) -> Result<Vec<(String, Value)>> {
    let tokenizer = checkpoint.tokenizer()?;
    let special = SpecialTokens::add_to(&mut tokenizer.clone(), config)?;
    let path = dir.join(TOKENIZER_CONFIG);
    let tokenizer_config = path
        .exists()
        .then(|| crate::files::read_to_string(&path, crate::files::limits::CONFIG_BYTES))
        .transpose()?;
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
    ];
    for part in Part::ALL {
        let format = plan.format(part).expect("checked by write_gguf");
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
    Ok(metadata)
}

/// Writes and syncs one GGUF file, returning its size.
/// Written beside the target and renamed, so that a failed run never leaves a file that looks
/// complete.
fn write_file(
    path: &Path,
    overwrite: Overwrite,
    metadata: &[(&str, &Value)],
    tensors: &[(&str, &QTensor)],
) -> Result<u64> {
    let mut out = AtomicFile::create(path, overwrite)?;
    let mut writer = BufWriter::new(out.file());
    gguf_file::write(&mut writer, metadata, tensors).map_err(|e| Error::Checkpoint {
        path: path.to_path_buf(),
        message: format!("cannot write the GGUF file ({e})"),
    })?;
    writer.flush().map_err(|e| Error::io(path, e))?;
    drop(writer);
    let size = out.file().metadata().map_err(|e| Error::io(path, e))?.len();
    out.commit()?;
    Ok(size)
}
