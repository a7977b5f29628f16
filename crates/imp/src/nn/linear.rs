//! The layers that hold weight matrices: the linear layer every model part uses and the token
//! embedding. They hide the weight format (dense f32/f16/bf16, GGML blocks through candle's
//! `QMatMul`, or Q4_0, Q4_K and Q8_0 on the CPU through our own [`kernels`](imp_kernels)), so the
//! model definitions never change when the storage does.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul};
use candle_core::{DType, Module, Tensor, D};
use imp_kernels::{PackedQ4K, PackedQ4_0, PackedQ8_0};

use super::lora::Lora;
use crate::quant::Matrix;
use crate::{Error, Result};

#[derive(Debug, Clone)]
pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
    in_features: usize,
    /// Input width of the stored weight: `in_features` plus a block format's zero padding.
    stored_in: usize,
    out_features: usize,
    lora: Option<Lora>,
}

/// Who multiplies with the weight.
#[derive(Debug, Clone)]
enum Weight {
    /// Dense weights, and the block formats we have no kernel of our own for (or not on this
    /// device).
    Candle(QMatMul),
    /// Q4_0 on the CPU: candle's Q4_0 product is a slow vector-dot loop on x86.
    Q4_0(Arc<PackedQ4_0>),
    /// Q4_K on the CPU: ours streams fewer bytes than candle's repacked kernel.
    Q4K(Arc<PackedQ4K>),
    /// Q8_0 on the CPU: ours streams the bytes closer to the memory bound than candle's.
    Q8_0(Arc<PackedQ8_0>),
}

impl Linear {
    /// `weight` in PyTorch layout `[out, in]`, used in its own dtype.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        let in_features = weight.dim(1)?;
        Self::from_matrix(Matrix::Dense(weight), in_features, bias)
    }

    /// A weight in any storage format whose logical input width is `in_features`.
    pub fn from_matrix(matrix: Matrix, in_features: usize, bias: Option<Tensor>) -> Result<Self> {
        let stored_in = matrix.stored_width()?;
        let out_features = match &matrix {
            Matrix::Dense(tensor) => tensor.dim(0)?,
            Matrix::Blocks(blocks) => blocks.shape().dims2()?.0,
        };
        // The GGML bytes of a repacked matrix are dropped with `blocks`: one copy stays.
        let weight = match matrix {
            Matrix::Blocks(blocks) if blocks.device().is_cpu() => match blocks.dtype() {
                GgmlDType::Q4_0 => Weight::Q4_0(Arc::new(PackedQ4_0::from_ggml(
                    &blocks.data()?,
                    out_features,
                    stored_in,
                )?)),
                GgmlDType::Q4K => Weight::Q4K(Arc::new(PackedQ4K::from_ggml(
                    &blocks.data()?,
                    out_features,
                    stored_in,
                )?)),
                GgmlDType::Q8_0 => Weight::Q8_0(Arc::new(PackedQ8_0::from_ggml(
                    &blocks.data()?,
                    out_features,
                    stored_in,
                )?)),
                _ => Weight::Candle(Matrix::Blocks(blocks).into_qmatmul()),
            },
            matrix => Weight::Candle(matrix.into_qmatmul()),
        };
        Ok(Self {
            weight,
            bias,
            in_features,
            stored_in,
            out_features,
            lora: None,
        })
    }

    /// The layer with low-rank adapters added to its output.
    pub fn with_lora(mut self, lora: Lora) -> Self {
        self.lora = Some(lora);
        self
    }

    pub fn lora(&self) -> Option<&Lora> {
        self.lora.as_ref()
    }

    pub fn in_features(&self) -> usize {
        self.in_features
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// `x[.., in] -> [.., out]`, in the dtype of `x`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _span = tracing::trace_span!("linear", out = self.out_features).entered();
        let dtype = x.dtype();
        let padding = self.stored_in - self.in_features;
        let quantized = !matches!(
            &self.weight,
            Weight::Candle(QMatMul::Tensor(_) | QMatMul::TensorF16(_))
        );
        if quantized && x.track_op() {
            // Block-format products have no backward: the gradient would stop here silently.
            return Err(Error::InvalidArgument(
                "gradients cannot flow through a quantized weight; train on a dense \
                 (f32, f16 or bf16) model"
                    .into(),
            ));
        }
        let y = match &self.weight {
            // A dense weight stored in another dtype than the activations (`--quant f16` at
            // f32) multiplies in its own dtype; block formats take f32, f16 and bf16
            // activations.
            Weight::Candle(weight) => {
                let x = match weight {
                    QMatMul::Tensor(w) | QMatMul::TensorF16(w) => x.to_dtype(w.dtype())?,
                    QMatMul::QTensor(_) => x.contiguous()?,
                };
                let x = x.pad_with_zeros(D::Minus1, 0, padding)?;
                weight.forward(&x)?
            }
            Weight::Q4_0(weight) => self.padded_f32(x)?.apply_op1_no_bwd(weight.as_ref())?,
            Weight::Q4K(weight) => self.padded_f32(x)?.apply_op1_no_bwd(weight.as_ref())?,
            Weight::Q8_0(weight) => self.padded_f32(x)?.apply_op1_no_bwd(weight.as_ref())?,
        }
        .to_dtype(dtype)?;
        let y = match &self.bias {
            Some(bias) if bias.dtype() == dtype => y.broadcast_add(bias)?,
            // A trained f32 bias in a half-precision model.
            Some(bias) => y.broadcast_add(&bias.to_dtype(dtype)?)?,
            None => y,
        };
        Ok(match &self.lora {
            Some(lora) => (y + lora.forward(x)?)?,
            None => y,
        })
    }

    /// `x` as our kernels take it: f32, zero-padded to the stored width, contiguous.
    fn padded_f32(&self, x: &Tensor) -> Result<Tensor> {
        let padding = self.stored_in - self.in_features;
        let x = x
            .to_dtype(DType::F32)?
            .pad_with_zeros(D::Minus1, 0, padding)?;
        Ok(x.contiguous()?)
    }
}

/// A token-embedding table `[vocab, hidden]` in any storage format; rows come out in the
/// compute dtype.
#[derive(Debug, Clone)]
pub struct Embedding {
    table: QMatMul,
    hidden: usize,
    dtype: DType,
}

impl Embedding {
    pub fn new(matrix: Matrix, hidden: usize, dtype: DType) -> Self {
        Self {
            table: matrix.into_qmatmul(),
            hidden,
            dtype,
        }
    }

    /// The rows of `ids` (u32) `[ids, hidden]`; block formats dequantize only these rows.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let rows = self.table.embedding(ids)?;
        Ok(rows
            .narrow(D::Minus1, 0, self.hidden)?
            .to_dtype(self.dtype)?
            .contiguous()?)
    }
}
