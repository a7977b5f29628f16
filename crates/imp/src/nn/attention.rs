//! Pieces shared by the vision and language attention: scaled dot-product attention, the causal
//! mask and rotary position embeddings.

use candle_core::{DType, Device, Tensor, D};
use imp_kernels::flash::{self, Visibility};
use imp_kernels::kv;

use crate::Result;

/// Scaled dot-product attention over `[.., heads, tokens, head_dim]`, query `i` seeing every key
/// (`causal_past: None`) or, causally, the keys up to its position `past + i`. `k` and `v` may
/// have fewer heads than `q` (grouped-query attention) and more tokens (a KV cache); any
/// operand may be a strided view. Scores and softmax run in f32 whatever the compute dtype, as
/// the references do (Phi-2 even computes QK^T in f32 to avoid overflow).
///
/// Keys and values may be stored in another format than `q` (the session's cache format,
/// [`crate::session::KvCache`]): the fused kernel reads them in place.
///
/// CPU inference runs the fused kernel ([`flash`]); other devices, and tensors that track
/// gradients, take [`attend_candle`] on keys and values widened to `q`'s dtype.
pub fn attend(q: &Tensor, k: &Tensor, v: &Tensor, causal_past: Option<usize>) -> Result<Tensor> {
    if flash::takes(q, k, v) {
        let scale = 1.0 / (q.dim(D::Minus1)? as f32).sqrt();
        let visibility = match causal_past {
            Some(past) => Visibility::Causal { past },
            None => Visibility::All,
        };
        return Ok(flash::flash_attention(q, k, v, scale, visibility)?);
    }
    let widen = |x: &Tensor| -> Result<Tensor> {
        Ok(match x.dtype() {
            DType::U8 => kv::dequantize_q8(x)?.to_dtype(q.dtype())?,
            _ => x.to_dtype(q.dtype())?,
        })
    };
    attend_candle(q, &widen(k)?, &widen(v)?, causal_past)
}

/// [`attend`] with candle's ops, materialising the scores: the reference the fused kernel is
/// tested against, and the path for other devices and for training.
pub fn attend_candle(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    causal_past: Option<usize>,
) -> Result<Tensor> {
    let scale = 1.0 / (q.dim(D::Minus1)? as f64).sqrt();
    let dtype = q.dtype();
    let groups = q.dim(D::Minus(3))? / k.dim(D::Minus(3))?;
    let (k, v) = if groups == 1 {
        (k.clone(), v.clone())
    } else {
        (repeat_kv(k, groups)?, repeat_kv(v, groups)?)
    };
    let q = q.to_dtype(DType::F32)?.contiguous()?;
    let k = k.to_dtype(DType::F32)?.contiguous()?;
    let mut scores = (q.matmul(&k.t()?)? * scale)?;
    let new = q.dim(D::Minus2)?;
    if let (Some(past), true) = (causal_past, new > 1) {
        scores = scores.broadcast_add(&causal_mask(past, new, k.dim(D::Minus2)?, q.device())?)?;
    }
    // candle's fused softmax has no backward.
    let probs = if scores.track_op() {
        candle_nn::ops::softmax(&scores, D::Minus1)?
    } else {
        candle_nn::ops::softmax_last_dim(&scores)?
    };
    let probs = probs.to_dtype(dtype)?;
    Ok(probs.matmul(&v.contiguous()?)?)
}

/// Grouped-query attention: each key/value head `[.., kv_heads, tokens, head_dim]` serves
/// `groups` query heads.
fn repeat_kv(x: &Tensor, groups: usize) -> Result<Tensor> {
    let (b, kv, t, d) = x.dims4()?;
    Ok(x.unsqueeze(2)?
        .expand((b, kv, groups, t, d))?
        .reshape((b, kv * groups, t, d))?)
}

/// Additive mask `[new, keys]` letting new token `i` (at position `past + i`) see keys
/// `0..=past + i`.
pub fn causal_mask(past: usize, new: usize, keys: usize, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..new)
        .flat_map(|i| (0..keys).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Ok(Tensor::from_vec(mask, (new, keys), device)?)
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
        // candle's fused rope has no backward; the composed one does.
        let rope = if x.track_op() {
            candle_nn::rotary_emb::rope_slow
        } else {
            candle_nn::rotary_emb::rope
        };
        if self.rotary_dim == head_dim {
            return Ok(rope(&x.contiguous()?, &cos, &sin)?);
        }
        let rotated = rope(
            &x.narrow(D::Minus1, 0, self.rotary_dim)?.contiguous()?,
            &cos,
            &sin,
        )?;
        let pass = x.narrow(D::Minus1, self.rotary_dim, head_dim - self.rotary_dim)?;
        // candle concatenates along the last dim into a transposed layout; the fused attention
        // needs rows of unit stride, and one contiguous copy of a few heads is cheap.
        Ok(Tensor::cat(&[rotated, pass], D::Minus1)?.contiguous()?)
    }
}
