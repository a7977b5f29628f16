//! [`Weights`]: named tensors of a [`TensorSource`] turned into the layers of [`crate::nn`].

use std::cell::RefCell;
use std::collections::BTreeSet;

use candle_core::{DType, Device, Tensor};

use super::TensorSource;
use crate::adapter::Adapter;
use crate::config::NormKind;
use crate::names::{LinearNames, NamingStyle, NormNames, Source};
use crate::nn::{Embedding, Linear, Lora, LoraRows, Norm};
use crate::quant::{self, Matrix, Part, Quantization, WeightGroup};
use crate::{Error, Result};

/// Loads named weights into model building blocks, in one compute dtype on one device, with
/// each part's matrices in the format the quantization plan gives it.
pub struct Weights<'a> {
    checkpoint: &'a dyn TensorSource,
    style: NamingStyle,
    pub dtype: DType,
    pub device: Device,
    quantization: Quantization,
    adapter: Option<&'a Adapter>,
    /// The adapter's modules and replacements that found their layer.
    adapted: RefCell<BTreeSet<String>>,
    /// How each matrix and the other tensors were stored, for `imp info`.
    stored: RefCell<Vec<WeightGroup>>,
}

impl<'a> Weights<'a> {
    /// `quantization` applies to a folder; a GGUF file's tensors are used as stored.
    pub fn new(
        checkpoint: &'a dyn TensorSource,
        style: NamingStyle,
        dtype: DType,
        device: Device,
        quantization: Quantization,
    ) -> Result<Self> {
        if checkpoint.stored_quantization().is_some() && !quantization.is_none() {
            return Err(Error::InvalidArgument(format!(
                "{} is already quantized and is used as stored; a quantization plan ({}) \
                 applies to a Hugging Face folder",
                checkpoint.location().display(),
                quantization
            )));
        }
        Ok(Self {
            checkpoint,
            style,
            dtype,
            device,
            quantization,
            adapter: None,
            adapted: RefCell::default(),
            stored: RefCell::default(),
        })
    }

    /// Adds the adapter's LoRA to the layers it names and uses its replacement tensors.
    pub fn with_adapter(mut self, adapter: &'a Adapter) -> Self {
        self.adapter = Some(adapter);
        self
    }

    /// Fails on any part of the adapter that no layer loaded so far used: an adapter for
    /// another model, or one reaching into the frozen vision tower.
    pub fn check_adapter_used(&self) -> Result<()> {
        let Some(adapter) = self.adapter else {
            return Ok(());
        };
        let adapted = self.adapted.borrow();
        let unused = adapter
            .lora_modules()
            .map(|(m, _)| m)
            .chain(adapter.replacements().map(|(n, _)| n))
            .find(|name| !adapted.contains(*name));
        match unused {
            Some(name) => Err(Error::tensor(
                name,
                format!(
                    "the adapter names a layer this {} model does not have or does not adapt \
                     (only the language model's linear layers take LoRA, and only the \
                     projector is replaced)",
                    self.style.label()
                ),
            )),
            None => Ok(()),
        }
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
        names: &LinearNames,
        out_features: usize,
        in_features: usize,
    ) -> Result<Linear> {
        let weight = match self.replacement(&names.weight, &[out_features, in_features])? {
            Some(weight) => Matrix::Dense(weight),
            None => self.matrix(&names.weight, out_features, in_features)?,
        };
        let bias = names
            .bias
            .as_ref()
            .map(|b| {
                if let Some(bias) = self.replacement(b, &[out_features])? {
                    return Ok(bias);
                }
                let bias = self
                    .checkpoint
                    .load(b, &[out_features], self.dtype, &self.device)?;
                self.record_dense(&b.to_string(), &bias);
                Ok::<_, Error>(bias)
            })
            .transpose()?;
        let linear = Linear::from_matrix(weight, in_features, bias)?;
        match self.lora(&names.weight, in_features, out_features)? {
            Some(lora) => Ok(linear.with_lora(lora)),
            None => Ok(linear),
        }
    }

    /// The adapter's stand-in for a single stored tensor, checked against `shape`. Used as
    /// given, in its own dtype: a variable being trained must stay the tensor the layer reads.
    fn replacement(&self, source: &Source, shape: &[usize]) -> Result<Option<Tensor>> {
        let (Some(adapter), Source::Tensor(name)) = (self.adapter, source) else {
            return Ok(None);
        };
        if self.style.part_of(name) != Part::Projector {
            return Ok(None);
        }
        let Some(tensor) = adapter.replacement(name) else {
            if adapter.replacements().next().is_some() {
                // A torn `non_lora_trainables` would otherwise mix trained and base layers.
                return Err(Error::tensor(
                    name.as_str(),
                    "the adapter replaces part of the projector but not this tensor",
                ));
            }
            return Ok(None);
        };
        if tensor.dims() != shape {
            return Err(Error::tensor(
                name.as_str(),
                format!(
                    "the adapter's replacement has shape {:?}, the model needs {shape:?}",
                    tensor.dims()
                ),
            ));
        }
        self.adapted.borrow_mut().insert(name.clone());
        Ok(Some(tensor.clone()))
    }

    /// The adapter's LoRA for a weight stored as one matrix or as rows of several, each stored
    /// matrix `<module>.weight` adapted by the pair named `<module>`.
    fn lora(&self, weight: &Source, in_features: usize, out: usize) -> Result<Option<Lora>> {
        let Some(adapter) = self.adapter else {
            return Ok(None);
        };
        // The vision tower stays frozen as the recipe has it; a pair meant for it is reported
        // as unused.
        if self.style.part_of(weight.names()[0]) != Part::Llm {
            return Ok(None);
        }
        let mut parts = Vec::new();
        let mut offset = 0;
        for name in weight.names() {
            let rows = self.checkpoint.shape(name)?[0];
            let module = name.strip_suffix(".weight").unwrap_or(name);
            if let Some(pair) = adapter.lora(module) {
                if pair.b.dim(0)? != rows {
                    return Err(Error::tensor(
                        format!("{module}.lora_B.weight"),
                        format!(
                            "has shape {:?}, but `{name}` has {rows} rows",
                            pair.b.dims()
                        ),
                    ));
                }
                parts.push(LoraRows {
                    offset,
                    a: pair.a.clone(),
                    b: pair.b.clone(),
                    scale: adapter.config().scale(),
                    dropout: adapter.training_dropout(),
                });
                self.adapted.borrow_mut().insert(module.to_owned());
            }
            offset += rows;
        }
        if parts.is_empty() {
            return Ok(None);
        }
        Ok(Some(Lora::new(parts, in_features, out)?))
    }

    /// The token-embedding table `[vocab, hidden]`, stored like the language model's matrices.
    pub fn embedding(&self, name: &str, vocab: usize, hidden: usize) -> Result<Embedding> {
        let table = self.matrix(&Source::Tensor(name.to_owned()), vocab, hidden)?;
        Ok(Embedding::new(table, hidden, self.dtype))
    }

    /// A normalisation layer of `kind`; LayerNorm's names must include a bias.
    pub fn norm(&self, names: &NormNames, kind: NormKind, dim: usize, eps: f64) -> Result<Norm> {
        let weight = self.tensor(&names.weight, &[dim])?;
        Ok(match (kind, &names.bias) {
            (NormKind::LayerNorm, Some(bias)) => {
                Norm::layer(weight, self.tensor(bias, &[dim])?, eps)
            }
            (NormKind::LayerNorm, None) => {
                return Err(Error::tensor(
                    names.weight.as_str(),
                    "is a LayerNorm scale, but the naming style gives no bias for it",
                ))
            }
            (NormKind::RmsNorm, _) => Norm::rms(weight, eps),
        })
    }

    /// A matrix `[out, in]` in its part's format, converted right after it is read so that
    /// the f32 copy is gone before the next matrix is read.
    fn matrix(&self, source: &Source, out: usize, width: usize) -> Result<Matrix> {
        let names = source.names();
        let part = self.style.part_of(names[0]);
        let requested = self.quantization.format(part);
        let provided = self
            .checkpoint
            .matrix(source, out, width, requested, &self.device)?;
        let matrix = match (provided, requested) {
            (Some(matrix), _) => matrix,
            (None, None) => Matrix::Dense(self.checkpoint.load(
                source,
                &[out, width],
                self.dtype,
                &self.device,
            )?),
            (None, Some(format)) => {
                let weight =
                    self.checkpoint
                        .load(source, &[out, width], DType::F32, &self.device)?;
                Matrix::convert(&weight, format)?
            }
        };
        if let Some(plan) = self.checkpoint.stored_quantization() {
            let format = matrix.format()?;
            if plan.format(part) != Some(format) {
                return Err(Error::tensor(
                    source.to_string(),
                    format!(
                        "is stored as {} although the file declares {plan}",
                        quant::format_name(format),
                    ),
                ));
            }
        }
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
