//! Pieces shared by the vision and language attention: scaled dot-product attention, the causal
//! mask and rotary position embeddings.

use candle_core::{DType, Device, Tensor, D};

use crate::Result;

/// Scaled dot-product attention over `[.., heads, tokens, head_dim]` with an optional additive
/// mask. Scores and softmax run in f32 whatever the compute dtype, as the references do (Phi-2
/// even computes QK^T in f32 to avoid overflow).
pub fn attend(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let dtype = q.dtype();
    let scale = 1.0 / (q.dim(D::Minus1)? as f64).sqrt();
    let q = q.to_dtype(DType::F32)?;
    let k = k.to_dtype(DType::F32)?;
    let mut scores = (q.matmul(&k.t()?)? * scale)?;
    if let Some(mask) = mask {
        scores = scores.broadcast_add(mask)?;
    }
    let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(dtype)?;
    Ok(probs.matmul(&v.contiguous()?)?)
}

/// Additive mask `[new, past + new]` letting new token `i` see every cached token and new
/// tokens `0..=i`.
pub fn causal_mask(past: usize, new: usize, device: &Device) -> Result<Tensor> {
    let total = past + new;
    let mask: Vec<f32> = (0..new)
        .flat_map(|i| (0..total).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Ok(Tensor::from_vec(mask, (new, total), device)?)
}

/// NeoX-style ("rotate half") rotary embedding on the first `rotary_dim` dims of each head; the
/// rest pass through (Phi-2 rotates 32 of 80).
#[derive(Debug, Clone)]
pub struct Rotary {
    rotary_dim: usize,
    cos: Tensor,
    sin: Tensor,
}

impl Rotary {
    /// Tables for positions `0..max_positions`, computed in f32 like the references.
    pub fn new(
        rotary_dim: usize,
        theta: f64,
        max_positions: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let half = rotary_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / rotary_dim as f32))
            .collect();
        let inv_freq = Tensor::from_vec(inv_freq, (1, half), device)?;
        let positions = Tensor::arange(0u32, max_positions as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((max_positions, 1))?;
        let freqs = positions.broadcast_mul(&inv_freq)?;
        Ok(Self {
            rotary_dim,
            cos: freqs.cos()?.to_dtype(dtype)?,
            sin: freqs.sin()?.to_dtype(dtype)?,
        })
    }

    pub fn max_positions(&self) -> usize {
        self.cos.dims()[0]
    }

    /// `x[1, heads, tokens, head_dim]` at positions `start..start + tokens`.
    pub fn apply(&self, x: &Tensor, start: usize) -> Result<Tensor> {
        let (_, _, tokens, head_dim) = x.dims4()?;
        let cos = self.cos.narrow(0, start, tokens)?;
        let sin = self.sin.narrow(0, start, tokens)?;
        if self.rotary_dim == head_dim {
            return Ok(candle_nn::rotary_emb::rope(&x.contiguous()?, &cos, &sin)?);
        }
        let rotated = candle_nn::rotary_emb::rope(
            &x.narrow(D::Minus1, 0, self.rotary_dim)?.contiguous()?,
            &cos,
            &sin,
        )?;
        let pass = x.narrow(D::Minus1, self.rotary_dim, head_dim - self.rotary_dim)?;
        Ok(Tensor::cat(&[rotated, pass], D::Minus1)?)
    }
}
