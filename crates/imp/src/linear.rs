//! The layers that hold weight matrices: the linear layer every model part uses and the token
//! embedding. They hide the weight format (dense f32/f16/bf16, or GGML blocks through candle's
//! `QMatMul`), so the model definitions never change when the storage does.

use candle_core::quantized::QMatMul;
use candle_core::{DType, Module, Tensor, D};

use crate::quant::Matrix;
use crate::Result;

#[derive(Debug, Clone)]
pub struct Linear {
    weight: QMatMul,
    bias: Option<Tensor>,
    in_features: usize,
    /// Input width of the stored weight: `in_features` plus a block format's zero padding.
    stored_in: usize,
    out_features: usize,
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
        Ok(Self {
            weight: matrix.into_qmatmul(),
            bias,
            in_features,
            stored_in,
            out_features,
        })
    }

    pub fn in_features(&self) -> usize {
        self.in_features
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// `x[.., in] -> [.., out]`, in the dtype of `x`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        // A dense weight stored in another dtype than the activations (`--quant f16` at f32)
        // multiplies in its own dtype; block formats take f32, f16 and bf16 activations.
        let x = match &self.weight {
            QMatMul::Tensor(w) | QMatMul::TensorF16(w) => x.to_dtype(w.dtype())?,
            QMatMul::QTensor(_) => x.contiguous()?,
        };
        let x = x.pad_with_zeros(D::Minus1, 0, self.stored_in - self.in_features)?;
        let y = self.weight.forward(&x)?.to_dtype(dtype)?;
        Ok(match &self.bias {
            Some(bias) => y.broadcast_add(bias)?,
            None => y,
        })
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
