//! Weight formats and the quantization plan: which format the matrices of the vision tower, the
//! projector and the language model are stored in, and the conversion of one matrix into it.
//!
//! Matrices are every linear layer's weight and the token-embedding table. Everything else
//! (norms, biases, the patch convolution, the position table) stays in the compute dtype: it is
//! under 1% of the parameters and the patch convolution is not a matrix product in any format
//! GGML tools quantize. GGML block formats need the input width to be a whole number of blocks
//! (32 values, or 256 for the k-quants); widths that are not (SigLIP's 1152 and 4304, the tiny
//! test models' 8-12) are zero-padded, and `nn::Linear` pads the activation
//! to match, so every matrix gets exactly the format asked for. The padding goes to a whole
//! 256-value super-block for every block format: candle's fast repacked x86 kernels need that
//! for q8_0 too (SigLIP's 1152 padded to 1280 runs the q8_0 vision tower 4.5x faster than
//! 1152 left as 36 blocks of 32).

use std::fmt;

use candle_core::quantized::{ggml_file, GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
use serde::Serialize;

use crate::{Error, Result};

/// The formats a matrix can be stored in, by their command-line names.
const FORMATS: [(&str, GgmlDType); 7] = [
    ("f32", GgmlDType::F32),
    ("f16", GgmlDType::F16),
    ("bf16", GgmlDType::BF16),
    ("q8_0", GgmlDType::Q8_0),
    ("q6_k", GgmlDType::Q6K),
    ("q4_k", GgmlDType::Q4K),
    ("q4_0", GgmlDType::Q4_0),
];

/// Parses a format name such as `q4_k` (case-insensitive).
pub fn parse_format(name: &str) -> Result<GgmlDType> {
    FORMATS
        .iter()
        .find(|(known, _)| known.eq_ignore_ascii_case(name))
        .map(|&(_, format)| format)
        .ok_or_else(|| {
            let valid: Vec<&str> = FORMATS.iter().map(|&(known, _)| known).collect();
            Error::InvalidArgument(format!(
                "unknown weight format `{name}`; valid formats: {}",
                valid.join(", ")
            ))
        })
}

/// The GGML name of a format (`q4_k`), also for formats only found in foreign files.
pub fn format_name(format: GgmlDType) -> &'static str {
    match format {
        GgmlDType::F32 => "f32",
        GgmlDType::F16 => "f16",
        GgmlDType::BF16 => "bf16",
        GgmlDType::Q4_0 => "q4_0",
        GgmlDType::Q4_1 => "q4_1",
        GgmlDType::Q5_0 => "q5_0",
        GgmlDType::Q5_1 => "q5_1",
        GgmlDType::Q8_0 => "q8_0",
        GgmlDType::Q8_1 => "q8_1",
        GgmlDType::Q2K => "q2_k",
        GgmlDType::Q3K => "q3_k",
        GgmlDType::Q4K => "q4_k",
        GgmlDType::Q5K => "q5_k",
        GgmlDType::Q6K => "q6_k",
        GgmlDType::Q8K => "q8_k",
    }
}

/// The dense dtype of a float format; `None` for block formats.
pub fn float_dtype(format: GgmlDType) -> Option<DType> {
    match format {
        GgmlDType::F32 => Some(DType::F32),
        GgmlDType::F16 => Some(DType::F16),
        GgmlDType::BF16 => Some(DType::BF16),
        _ => None,
    }
}

/// Values in a k-quant super-block, the unit block formats pad the input width to.
const SUPER_BLOCK: usize = 256;

/// The input width a matrix of `width` columns is stored with in `format`.
pub fn padded_width(width: usize, format: GgmlDType) -> usize {
    match float_dtype(format) {
        Some(_) => width,
        None => width.next_multiple_of(SUPER_BLOCK),
    }
}

/// The three separately quantizable parts of an Imp model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    Vision,
    Projector,
    Llm,
}

impl Part {
    pub const ALL: [Part; 3] = [Part::Vision, Part::Projector, Part::Llm];

    pub fn name(self) -> &'static str {
        match self {
            Self::Vision => "vision",
            Self::Projector => "projector",
            Self::Llm => "llm",
        }
    }

    /// What a part holds besides matrices; it stays in the compute dtype.
    pub fn other_tensors(self) -> &'static str {
        match self {
            Self::Vision => "patch embedding, position table, norms, biases",
            Self::Projector => "biases",
            Self::Llm => "norms, biases",
        }
    }
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The storage format of each part's matrices; `None` keeps a part's matrices in the compute
/// dtype, as loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quantization {
    pub vision: Option<GgmlDType>,
    pub projector: Option<GgmlDType>,
    pub llm: Option<GgmlDType>,
}

impl Quantization {
    /// Every part in `format`.
    pub fn all(format: GgmlDType) -> Self {
        Self {
            vision: Some(format),
            projector: Some(format),
            llm: Some(format),
        }
    }

    /// The plan of the command-line options: `all` for every part, overridden per part; the
    /// projector follows the vision tower unless given its own format.
    pub fn from_names(
        all: Option<&str>,
        llm: Option<&str>,
        vision: Option<&str>,
        projector: Option<&str>,
    ) -> Result<Self> {
        let parse = |name: Option<&str>| name.map(parse_format).transpose();
        let all = parse(all)?;
        let vision = parse(vision)?.or(all);
        Ok(Self {
            vision,
            projector: parse(projector)?.or(vision),
            llm: parse(llm)?.or(all),
        })
    }

    pub fn is_none(&self) -> bool {
        *self == Self::default()
    }

    pub fn format(&self, part: Part) -> Option<GgmlDType> {
        match part {
            Part::Vision => self.vision,
            Part::Projector => self.projector,
            Part::Llm => self.llm,
        }
    }

    /// This plan with only the vision tower and the projector quantized.
    pub fn vision_only(&self) -> Self {
        Self { llm: None, ..*self }
    }

    /// This plan with only the language model quantized.
    pub fn llm_only(&self) -> Self {
        Self {
            vision: None,
            projector: None,
            ..*self
        }
    }
}

impl fmt::Display for Quantization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = Part::ALL
            .iter()
            .map(|&part| {
                let format = self.format(part).map_or("compute dtype", format_name);
                format!("{part} {format}")
            })
            .collect();
        f.write_str(&parts.join(", "))
    }
}

/// A weight matrix `[out, in]` in its storage format.
#[derive(Debug)]
pub enum Matrix {
    /// f32, f16 or bf16 values, used as they are.
    Dense(Tensor),
    /// GGML blocks `[out, padded_width(in)]`, the padding columns zero.
    Blocks(QTensor),
}

impl Matrix {
    /// Converts `weight[out, in]` (any float dtype, on the CPU) to `format`.
    pub fn convert(weight: &Tensor, format: GgmlDType) -> Result<Self> {
        if let Some(dtype) = float_dtype(format) {
            return Ok(Self::Dense(weight.to_dtype(dtype)?));
        }
        let (rows, width) = weight.dims2()?;
        let padded = padded_width(width, format);
        let values = weight
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        // Blocks never straddle rows, so quantizing chunks of rows in parallel gives the bytes
        // of quantizing the whole matrix at once.
        let chunk_rows = 65_536usize.div_ceil(padded);
        let chunks = values
            .par_chunks(chunk_rows * width)
            .map(|chunk| {
                let mut rows = vec![0f32; chunk.len() / width * padded];
                for (row, values) in rows.chunks_mut(padded).zip(chunk.chunks(width)) {
                    row[..width].copy_from_slice(values);
                }
                let rows = Tensor::from_vec(rows, (chunk.len() / width, padded), &Device::Cpu)?;
                Ok(QTensor::quantize(&rows, format)?.data()?.into_owned())
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self::Blocks(ggml_file::qtensor_from_ggml(
            format,
            &chunks.concat(),
            vec![rows, padded],
            weight.device(),
        )?))
    }

    pub fn format(&self) -> Result<GgmlDType> {
        match self {
            Self::Dense(tensor) => match tensor.dtype() {
                DType::F32 => Ok(GgmlDType::F32),
                DType::F16 => Ok(GgmlDType::F16),
                DType::BF16 => Ok(GgmlDType::BF16),
                other => Err(Error::InvalidArgument(format!(
                    "a weight matrix cannot be stored as {other:?}"
                ))),
            },
            Self::Blocks(blocks) => Ok(blocks.dtype()),
        }
    }

    /// Stored columns, padding included.
    pub fn stored_width(&self) -> Result<usize> {
        Ok(match self {
            Self::Dense(tensor) => tensor.dims2()?.1,
            Self::Blocks(blocks) => blocks.shape().dims2()?.1,
        })
    }

    pub fn size_in_bytes(&self) -> usize {
        match self {
            Self::Dense(tensor) => tensor.elem_count() * tensor.dtype().size_in_bytes(),
            Self::Blocks(blocks) => blocks.storage_size_in_bytes(),
        }
    }

    /// The matrix as one GGUF tensor (lossless: float formats keep their dtype).
    pub fn into_qtensor(self) -> Result<QTensor> {
        let format = self.format()?;
        Ok(match self {
            Self::Dense(tensor) => QTensor::quantize(&tensor, format)?,
            Self::Blocks(blocks) => blocks,
        })
    }

    pub(crate) fn into_qmatmul(self) -> QMatMul {
        match self {
            // Not `QMatMul::from_qtensor`, which would widen f16 and bf16 back to f32.
            Self::Dense(tensor) => QMatMul::Tensor(tensor),
            Self::Blocks(blocks) => QMatMul::QTensor(std::sync::Arc::new(blocks)),
        }
    }
}

/// How one group of weights is stored, as `imp info` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WeightGroup {
    pub part: Part,
    /// The stored names with layer indices as `*` (vision names without their long prefix),
    /// e.g. `encoder.layers.*.self_attn.{q_proj,k_proj,v_proj}`; for the tensors that are not
    /// matrices, a description.
    pub name: String,
    /// Format name, e.g. `q4_k`.
    pub format: String,
    pub tensors: usize,
    /// Input width of the matrices (0 for the other tensors).
    pub width: usize,
    /// Stored input width, zero padding included.
    pub stored_width: usize,
    /// Values, padding excluded.
    pub values: usize,
    pub bytes: usize,
}

impl WeightGroup {
    /// Adds one more tensor of the same group.
    pub(crate) fn merge(groups: &mut Vec<WeightGroup>, entry: WeightGroup) {
        let same = |g: &&mut WeightGroup| {
            g.part == entry.part
                && g.name == entry.name
                && g.format == entry.format
                && g.width == entry.width
                && g.stored_width == entry.stored_width
        };
        match groups.iter_mut().find(same) {
            Some(group) => {
                group.tensors += entry.tensors;
                group.values += entry.values;
                group.bytes += entry.bytes;
            }
            None => groups.push(entry),
        }
    }
}

/// The group label of stored tensor names: `.weight` dropped, the index after `layers` or `h`
/// replaced by `*`, `prefix` removed, several names joined as `common.{a,b,c}`.
pub(crate) fn group_label(names: &[&str], prefix: &str) -> String {
    let labels: Vec<String> = names
        .iter()
        .map(|name| {
            let name = name.strip_prefix(prefix).unwrap_or(name);
            let name = name.strip_suffix(".weight").unwrap_or(name);
            let mut previous = "";
            name.split('.')
                .map(|segment| {
                    let indexed = matches!(previous, "layers" | "h")
                        && segment.bytes().all(|b| b.is_ascii_digit());
                    previous = segment;
                    if indexed {
                        "*"
                    } else {
                        segment
                    }
                })
                .collect::<Vec<_>>()
                .join(".")
        })
        .collect();
    match &labels[..] {
        [one] => one.clone(),
        [first, ..] => {
            let stem = first.rfind('.').map_or("", |dot| &first[..=dot]);
            if labels.iter().all(|l| l.starts_with(stem)) {
                let leaves: Vec<&str> = labels.iter().map(|l| &l[stem.len()..]).collect();
                format!("{stem}{{{}}}", leaves.join(","))
            } else {
                labels.join(" + ")
            }
        }
        [] => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_follows_the_vision_setting_for_the_projector() {
        let plan = Quantization::from_names(Some("q4_k"), None, Some("q8_0"), None).unwrap();
        assert_eq!(plan.llm, Some(GgmlDType::Q4K));
        assert_eq!(plan.vision, Some(GgmlDType::Q8_0));
        assert_eq!(plan.projector, Some(GgmlDType::Q8_0));
        let plan = Quantization::from_names(None, Some("q4_0"), None, Some("f16")).unwrap();
        assert_eq!(plan.vision, None);
        assert_eq!(plan.projector, Some(GgmlDType::F16));
        assert!(Quantization::from_names(None, None, None, None)
            .unwrap()
            .is_none());
    }

    #[test]
    fn group_labels() {
        let names = [
            "m.v.encoder.layers.12.self_attn.q_proj.weight",
            "m.v.encoder.layers.12.self_attn.k_proj.weight",
        ];
        assert_eq!(
            group_label(&names, "m.v."),
            "encoder.layers.*.self_attn.{q_proj,k_proj}"
        );
        assert_eq!(
            group_label(&["transformer.h.3.mixer.Wqkv.weight"], ""),
            "transformer.h.*.mixer.Wqkv"
        );
        assert_eq!(
            group_label(&["model.mm_projector.2.weight"], ""),
            "model.mm_projector.2"
        );
    }

    #[test]
    fn parallel_row_chunks_quantize_like_the_whole_matrix() {
        let device = candle_core::Device::Cpu;
        let weight = Tensor::randn(0f32, 1.0, (3000, 300), &device).unwrap();
        for format in [GgmlDType::Q8_0, GgmlDType::Q4K] {
            let Matrix::Blocks(chunked) = Matrix::convert(&weight, format).unwrap() else {
                panic!("a block format");
            };
            let padding = padded_width(300, format) - 300;
            let whole =
                QTensor::quantize(&weight.pad_with_zeros(1, 0, padding).unwrap(), format).unwrap();
            assert_eq!(chunked.shape(), whole.shape());
            assert!(
                chunked.data().unwrap() == whole.data().unwrap(),
                "{format:?}"
            );
        }
    }

    #[test]
    fn block_formats_pad_the_input_width_with_zeros() {
        let weight = Tensor::arange(0f32, 30.0, &candle_core::Device::Cpu)
            .unwrap()
            .reshape((3, 10))
            .unwrap();
        let Matrix::Blocks(blocks) = Matrix::convert(&weight, GgmlDType::Q8_0).unwrap() else {
            panic!("q8_0 is a block format");
        };
        assert_eq!(blocks.shape().dims(), &[3, 256]);
        let back = blocks.dequantize(&candle_core::Device::Cpu).unwrap();
        let padding = back.narrow(1, 10, 246).unwrap().abs().unwrap();
        assert_eq!(padding.sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    }
}
