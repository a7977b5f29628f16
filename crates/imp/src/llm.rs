//! The language model: one decoder definition for Phi-2, Qwen2 and Phi-3.
//!
//! The three differ only in a few structural choices, carried by [`Family`]:
//! - Phi-2: LayerNorm, a parallel block (`x + attn(ln(x)) + mlp(ln(x))`), GELU-tanh MLP,
//!   partial rotary (the first 32 of 80 head dims), biases everywhere;
//! - Qwen2 / Phi-3: RMSNorm, sequential pre-norm blocks, SwiGLU MLP, full rotary.
//!
//! Per-conversation state lives in a [`Session`], so the decoder itself is immutable.

use candle_core::{DType, Device, IndexOp, Tensor, D};
use imp_kernels::gelu::gelu;

use crate::attention::{attend, Rotary};
use crate::checkpoint::{NamingStyle, Weights};
use crate::linear::{Embedding, Linear};
use crate::norm::Norm;
use crate::session::Session;
use crate::{Error, Result};

/// Which base language model an Imp checkpoint wraps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Phi2,
    Qwen2,
    Phi3,
}

impl Family {
    pub fn label(self) -> &'static str {
        match self {
            Self::Phi2 => "Phi-2",
            Self::Qwen2 => "Qwen1.5 (Qwen2 architecture)",
            Self::Phi3 => "Phi-3-mini",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DecoderConfig {
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Leading head dims that rotate (Phi-2: 32 of 80; the others: all).
    pub rotary_dim: usize,
    pub rope_theta: f64,
    pub norm_eps: f64,
}

impl DecoderConfig {
    fn qkv_rows(&self) -> usize {
        (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
    }

    fn mlp_in_rows(&self) -> usize {
        match self.family {
            Family::Phi2 => self.intermediate_size,
            Family::Qwen2 | Family::Phi3 => 2 * self.intermediate_size,
        }
    }
}

struct DecoderLayer {
    attn_norm: Norm,
    /// `None` for the parallel block, which reuses `attn_norm`.
    mlp_norm: Option<Norm>,
    qkv: Linear,
    attn_out: Linear,
    mlp_in: Linear,
    mlp_out: Linear,
}

pub struct Decoder {
    config: DecoderConfig,
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    final_norm: Norm,
    lm_head: Linear,
    rotary: Rotary,
    dtype: DType,
    device: Device,
}

impl Decoder {
    /// Loads the decoder; rotary tables cover `max_positions` (the model's context limit).
    pub fn load(
        weights: &Weights,
        style: NamingStyle,
        config: &DecoderConfig,
        max_positions: usize,
    ) -> Result<Self> {
        let h = config.hidden_size;
        let names = style.decoder();
        let embed_tokens = weights.embedding(&names.embed_tokens, config.vocab_size, h)?;
        let layers = (0..config.num_layers)
            .map(|i| {
                let n = style.decoder_layer(i);
                Ok(DecoderLayer {
                    attn_norm: weights.norm(&n.attn_norm, h, config.norm_eps)?,
                    mlp_norm: n
                        .mlp_norm
                        .as_ref()
                        .map(|m| weights.norm(m, h, config.norm_eps))
                        .transpose()?,
                    qkv: weights.linear(&n.qkv, config.qkv_rows(), h)?,
                    attn_out: weights.linear(&n.attn_out, h, config.num_heads * config.head_dim)?,
                    mlp_in: weights.linear(&n.mlp_in, config.mlp_in_rows(), h)?,
                    mlp_out: weights.linear(&n.mlp_out, h, config.intermediate_size)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            config: config.clone(),
            embed_tokens,
            layers,
            final_norm: weights.norm(&names.final_norm, h, config.norm_eps)?,
            lm_head: weights.linear(&names.lm_head, config.vocab_size, h)?,
            rotary: Rotary::new(
                config.rotary_dim,
                config.rope_theta,
                max_positions,
                weights.dtype,
                &weights.device,
            )?,
            dtype: weights.dtype,
            device: weights.device.clone(),
        })
    }

    pub fn config(&self) -> &DecoderConfig {
        &self.config
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Token embeddings `[ids.len(), hidden]`.
    pub fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        if let Some(&id) = ids
            .iter()
            .find(|&&id| id as usize >= self.config.vocab_size)
        {
            return Err(Error::Prompt(format!(
                "token id {id} is outside the model's vocabulary of {}",
                self.config.vocab_size
            )));
        }
        let ids = Tensor::new(ids, self.device())?;
        self.embed_tokens.forward(&ids)
    }

    /// Runs `embeds[tokens, hidden]` at the session's next positions, storing their keys and
    /// values, and returns the final-normed hidden states `[tokens, hidden]`.
    pub fn forward(&self, embeds: &Tensor, session: &mut Session) -> Result<Tensor> {
        let (tokens, _) = embeds.dims2()?;
        let start = session.len();
        let end = start + tokens;
        if end > self.rotary.max_positions() {
            return Err(Error::ContextOverflow {
                needed: end,
                limit: self.rotary.max_positions(),
            });
        }
        session.reserve(end)?;
        let mut x = embeds.unsqueeze(0)?;
        for (index, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x, index, start, session, self)?;
        }
        session.advance(tokens);
        self.final_norm.forward(&x.squeeze(0)?)
    }

    /// Next-token logits in f32 for the given hidden rows `[n, hidden] -> [n, vocab]`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(self.lm_head.forward(hidden)?.to_dtype(DType::F32)?)
    }

    /// Logits of the last row only, as a vector.
    pub fn last_logits(&self, hidden: &Tensor) -> Result<Vec<f32>> {
        let last = hidden.i(hidden.dim(0)? - 1)?.unsqueeze(0)?;
        Ok(self.logits(&last)?.squeeze(0)?.to_vec1()?)
    }
}

impl DecoderLayer {
    fn forward(
        &self,
        x: &Tensor,
        index: usize,
        start: usize,
        session: &mut Session,
        decoder: &Decoder,
    ) -> Result<Tensor> {
        let normed = self.attn_norm.forward(x)?;
        let attn = self.attention(&normed, index, start, session, decoder)?;
        match &self.mlp_norm {
            None => {
                let mlp = self.mlp(&normed, decoder.config.family)?;
                Ok(((x + attn)? + mlp)?)
            }
            Some(mlp_norm) => {
                let x = (x + attn)?;
                let mlp = self.mlp(&mlp_norm.forward(&x)?, decoder.config.family)?;
                Ok((x + mlp)?)
            }
        }
    }

    fn attention(
        &self,
        x: &Tensor,
        index: usize,
        start: usize,
        session: &mut Session,
        decoder: &Decoder,
    ) -> Result<Tensor> {
        let cfg = &decoder.config;
        let (_, tokens, _) = x.dims3()?;
        let (heads, kv_heads, hd) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        let qkv = self.qkv.forward(x)?;
        let heads_of = |offset: usize, count: usize| -> Result<Tensor> {
            Ok(qkv
                .narrow(D::Minus1, offset * hd, count * hd)?
                .reshape((1, tokens, count, hd))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = decoder.rotary.apply(&heads_of(0, heads)?, start)?;
        let k = decoder.rotary.apply(&heads_of(heads, kv_heads)?, start)?;
        let v = heads_of(heads + kv_heads, kv_heads)?;
        // The cache views go in as they are: attention reads the strided rows and shares each
        // key/value head among its query heads.
        let (k, v) = session.append(index, &k, &v)?;
        let out = attend(&q, &k, &v, Some(start))?;
        let out = out.transpose(1, 2)?.reshape((1, tokens, heads * hd))?;
        self.attn_out.forward(&out)
    }

    fn mlp(&self, x: &Tensor, family: Family) -> Result<Tensor> {
        let h = self.mlp_in.forward(x)?;
        let h = match family {
            Family::Phi2 => gelu(&h)?,
            Family::Qwen2 | Family::Phi3 => {
                let inner = h.dim(D::Minus1)? / 2;
                let gate = h.narrow(D::Minus1, 0, inner)?;
                let up = h.narrow(D::Minus1, inner, inner)?;
                (candle_nn::ops::silu(&gate)? * up)?
            }
        };
        self.mlp_out.forward(&h)
    }
}
