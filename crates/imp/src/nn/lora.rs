//! Low-rank adapters as PEFT computes them: `y = base(x) + scale · B(A(dropout(x)))`, with
//! `A: [r, in]`, `B: [out, r]` and `scale = alpha / r`.
//!
//! A fused layer (q, k and v stacked in one matrix) carries one adapter per stored matrix, each
//! adding to its own rows of the output, so an adapter trained on separate `q_proj`, `k_proj`
//! and `v_proj` applies unchanged.

use candle_core::{Tensor, D};

use crate::{Error, Result};

/// One adapter, adding to output rows `offset..offset + b.dim(0)`.
#[derive(Debug, Clone)]
pub struct LoraRows {
    pub offset: usize,
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
    /// Applied to the input while training; 0 at inference.
    pub dropout: f32,
}

#[derive(Debug, Clone)]
pub struct Lora {
    /// Sorted by offset, not overlapping.
    parts: Vec<LoraRows>,
    out_features: usize,
}

impl Lora {
    /// Checks that the parts fit a layer `[out_features, in_features]` without overlapping.
    pub fn new(mut parts: Vec<LoraRows>, in_features: usize, out_features: usize) -> Result<Self> {
        parts.sort_by_key(|p| p.offset);
        let mut end = 0;
        for part in &parts {
            let (rank, a_in) = part.a.dims2()?;
            let (rows, b_rank) = part.b.dims2()?;
            if a_in != in_features || b_rank != rank {
                return Err(Error::InvalidArgument(format!(
                    "LoRA shapes A {:?} and B {:?} do not fit a layer with {in_features} inputs",
                    part.a.dims(),
                    part.b.dims()
                )));
            }
            if part.offset < end || part.offset + rows > out_features {
                return Err(Error::InvalidArgument(format!(
                    "LoRA rows {}..{} do not fit a layer with {out_features} outputs",
                    part.offset,
                    part.offset + rows
                )));
            }
            end = part.offset + rows;
        }
        Ok(Self {
            parts,
            out_features,
        })
    }

    pub fn parts(&self) -> &[LoraRows] {
        &self.parts
    }

    /// The adapters' contribution `x[.., in] -> [.., out]` in the dtype of `x`, zero in rows no
    /// adapter covers. Computed in the adapters' dtype, as PEFT does.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let leading = &x.dims()[..x.rank() - 1];
        let zeros = |width: usize| -> Result<Tensor> {
            let mut shape = leading.to_vec();
            shape.push(width);
            Ok(Tensor::zeros(shape, x.dtype(), x.device())?)
        };
        let mut pieces = Vec::with_capacity(2 * self.parts.len() + 1);
        let mut end = 0;
        for part in &self.parts {
            if part.offset > end {
                pieces.push(zeros(part.offset - end)?);
            }
            let input = super::dropout::dropout(x, part.dropout)?;
            let delta = input
                .to_dtype(part.a.dtype())?
                .broadcast_matmul(&part.a.t()?)?
                .broadcast_matmul(&part.b.t()?)?;
            pieces.push((delta * part.scale)?.to_dtype(x.dtype())?);
            end = part.offset + part.b.dim(0)?;
        }
        if end < self.out_features {
            pieces.push(zeros(self.out_features - end)?);
        }
        Ok(match pieces.as_slice() {
            [only] => only.clone(),
            _ => Tensor::cat(&pieces, D::Minus1)?,
        })
    }
}
