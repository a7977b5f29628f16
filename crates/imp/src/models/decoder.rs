//! The language model: one decoder definition for Phi-2, Qwen2 and Phi-3.
//!
//! The three differ only in a few structural choices, which [`Family`](crate::config::Family)
//! states:
//! - Phi-2: LayerNorm, a parallel block (`x + attn(ln(x)) + mlp(ln(x))`), GELU-tanh MLP,
//!   partial rotary (the first 32 of 80 head dims), biases everywhere;
//! - Qwen2 / Phi-3: RMSNorm, sequential pre-norm blocks, SwiGLU MLP, full rotary.
//!
//! Where the biases are, and how each style names and fuses its matrices, is
//! [`crate::names`]' business. Per-conversation state lives in a [`Session`], so the decoder
//! itself is immutable.

use candle_core::{DType, Device, IndexOp, Tensor, D};

use crate::checkpoint::Weights;
use crate::config::{Block, DecoderConfig, Mlp};
use crate::names::{NamingStyle, NormNames};
use crate::nn::act::{gelu_tanh, silu};
use crate::nn::attention::{attend, Rotary};
use crate::nn::dropout::dropout;
use crate::nn::{Embedding, Linear, Norm};
use crate::session::Session;
use crate::{Error, Result};

/// Most rows of a prompt that go through the layers together. Each weight is read once per
/// chunk (a few hundred rows keep the block kernels as busy as a whole prompt does), while the
/// activations held at once stop growing with the prompt: Phi-2's 792-token image question,
/// q4_k, peaked about 100 MiB lower in chunks than in one pass, with no prefill speed lost that
/// three alternating runs could tell from the machine's noise (AVX2-only AMD EPYC, 2 threads).
pub const PREFILL_CHUNK: usize = 256;

struct DecoderLayer {
    norms: BlockNorms,
    qkv: Linear,
    attn_out: Linear,
    mlp_in: Linear,
    mlp_out: Linear,
}

/// The norms of one layer, as its family's [`Block`] uses them.
enum BlockNorms {
    /// One norm feeds both attention and MLP.
    Parallel(Norm),
    Sequential {
        attn: Norm,
        mlp: Norm,
    },
}

pub struct Decoder {
    config: DecoderConfig,
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    final_norm: Norm,
    lm_head: Linear,
    rotary: Rotary,
    /// Training-mode dropout on attention and MLP outputs; 0 for inference.
    residual_dropout: f32,
    dtype: DType,
    device: Device,
}

impl Decoder {
    /// Loads the decoder; rotary tables cover `max_positions` (the model's context limit).
    /// `residual_dropout` > 0 is for training only.
    pub fn load(
        weights: &Weights,
        style: NamingStyle,
        config: &DecoderConfig,
        max_positions: usize,
        residual_dropout: f32,
    ) -> Result<Self> {
        if !(0.0..1.0).contains(&residual_dropout) {
            return Err(Error::InvalidArgument(format!(
                "residual dropout {residual_dropout} must be in [0, 1)"
            )));
        }
        let h = config.hidden_size;
        let names = style.decoder();
        let norm_kind = config.family.norm();
        let norm = |names: &NormNames| weights.norm(names, norm_kind, h, config.norm_eps);
        let embed_tokens = weights.embedding(&names.embed_tokens, config.vocab_size, h)?;
        let layers = (0..config.num_layers)
            .map(|i| {
                let n = style.decoder_layer(i);
                let norms = match (config.family.block(), &n.mlp_norm) {
                    (Block::Parallel, _) => BlockNorms::Parallel(norm(&n.attn_norm)?),
                    (Block::Sequential, Some(mlp_norm)) => BlockNorms::Sequential {
                        attn: norm(&n.attn_norm)?,
                        mlp: norm(mlp_norm)?,
                    },
                    (Block::Sequential, None) => {
                        return Err(Error::tensor(
                            n.attn_norm.weight.as_str(),
                            "belongs to a sequential block, but the naming style gives no \
                             second norm",
                        ))
                    }
                };
                Ok(DecoderLayer {
                    norms,
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
            final_norm: norm(&names.final_norm)?,
            lm_head: weights.linear(&names.lm_head, config.vocab_size, h)?,
            rotary: Rotary::new(
                config.rotary_dim,
                config.rope_theta,
                max_positions,
                weights.dtype,
                &weights.device,
            )?,
            residual_dropout,
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
    /// values, and returns the final-normed hidden states `[tokens, hidden]`. A prompt longer
    /// than [`PREFILL_CHUNK`] runs in equal chunks of at most that many rows.
    pub fn forward(&self, embeds: &Tensor, session: &mut Session) -> Result<Tensor> {
        self.forward_in_chunks(embeds, session, PREFILL_CHUNK)
    }

    /// [`Self::forward`], feeding equal chunks of at most `chunk` rows through the layers: each
    /// chunk's keys and values are in the cache before the next chunk attends to them, so
    /// the result is that of one pass, while the activations held at once are one chunk's.
    /// On an error the session is left as it was.
    pub fn forward_in_chunks(
        &self,
        embeds: &Tensor,
        session: &mut Session,
        chunk: usize,
    ) -> Result<Tensor> {
        let (tokens, _) = embeds.dims2()?;
        if chunk == 0 || tokens == 0 {
            return Err(Error::InvalidArgument(format!(
                "{tokens} rows to feed in chunks of {chunk}: both must be at least 1"
            )));
        }
        let start = session.len();
        let end = start + tokens;
        if end > self.rotary.max_positions() {
            return Err(Error::ContextOverflow {
                needed: end,
                limit: self.rotary.max_positions(),
            });
        }
        let _span = tracing::trace_span!("decoder", tokens).entered();
        session.reserve(end)?;
        // Equal chunks: 792 rows go as 4 x 198, not 3 x 256 + 24.
        let count = tokens.div_ceil(chunk);
        let chunk = tokens.div_ceil(count);
        let hidden = on_worker(|| {
            let mut chunks = Vec::with_capacity(count);
            for first in (0..tokens).step_by(chunk) {
                let rows = chunk.min(tokens - first);
                let part = embeds.narrow(0, first, rows)?;
                chunks.push(self.run_layers(&part, start + first, Some(&mut *session))?);
                session.advance(rows);
            }
            Ok(Tensor::cat(&chunks, 0)?)
        });
        if hidden.is_err() {
            session.truncate(start);
        }
        hidden
    }

    /// Runs a whole sequence `embeds[tokens, hidden]` from position 0 without a cache, and
    /// returns the final-normed hidden states `[tokens, hidden]`: the training forward pass,
    /// differentiable wherever the inputs or weights track gradients.
    pub fn forward_sequence(&self, embeds: &Tensor) -> Result<Tensor> {
        let (tokens, _) = embeds.dims2()?;
        if tokens > self.rotary.max_positions() {
            return Err(Error::ContextOverflow {
                needed: tokens,
                limit: self.rotary.max_positions(),
            });
        }
        let _span = tracing::trace_span!("decoder", tokens).entered();
        self.run_layers(embeds, 0, None)
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Layer `index` alone over a whole sequence `x[tokens, hidden]` from position 0, without
    /// a cache: training recomputes one layer at a time with it.
    pub fn forward_layer(&self, index: usize, x: &Tensor) -> Result<Tensor> {
        let layer = self.layers.get(index).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "layer {index} of a decoder with {} layers",
                self.layers.len()
            ))
        })?;
        let _span = tracing::trace_span!("decoder_layer", index).entered();
        layer
            .forward(&x.unsqueeze(0)?, index, 0, None, self)?
            .squeeze(0)
            .map_err(Error::from)
    }

    /// The norm after the last layer, `[tokens, hidden]`.
    pub fn final_norm(&self, x: &Tensor) -> Result<Tensor> {
        self.final_norm.forward(x)
    }

    fn run_layers(
        &self,
        embeds: &Tensor,
        start: usize,
        mut session: Option<&mut Session>,
    ) -> Result<Tensor> {
        let mut x = embeds.unsqueeze(0)?;
        for (index, layer) in self.layers.iter().enumerate() {
            let _span = tracing::trace_span!("decoder_layer", index).entered();
            x = layer.forward(&x, index, start, session.as_deref_mut(), self)?;
        }
        self.final_norm.forward(&x.squeeze(0)?)
    }

    /// Next-token logits in f32 for the given hidden rows `[n, hidden] -> [n, vocab]`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let _span = tracing::trace_span!("lm_head").entered();
        Ok(self.lm_head.forward(hidden)?.to_dtype(DType::F32)?)
    }

    /// Logits of the last row only, as a vector.
    pub fn last_logits(&self, hidden: &Tensor) -> Result<Vec<f32>> {
        let last = hidden.i(hidden.dim(0)? - 1)?.unsqueeze(0)?;
        let logits: Vec<f32> = self.logits(&last)?.squeeze(0)?.to_vec1()?;
        // NaN or infinite weights load without a trace and turn every answer into garbage;
        // checking the one row of logits a step costs nothing next to the matmuls behind it.
        if logits.iter().any(|x| !x.is_finite()) {
            return Err(Error::NonFiniteLogits);
        }
        Ok(logits)
    }
}

impl DecoderLayer {
    fn forward(
        &self,
        x: &Tensor,
        index: usize,
        start: usize,
        session: Option<&mut Session>,
        decoder: &Decoder,
    ) -> Result<Tensor> {
        let mlp_kind = decoder.config.family.mlp();
        let drop_branch = |branch: Tensor| dropout(&branch, decoder.residual_dropout);
        match &self.norms {
            BlockNorms::Parallel(norm) => {
                let normed = norm.forward(x)?;
                let attn = drop_branch(self.attention(&normed, index, start, session, decoder)?)?;
                let mlp = drop_branch(self.mlp(&normed, mlp_kind)?)?;
                Ok(((x + attn)? + mlp)?)
            }
            BlockNorms::Sequential { attn, mlp } => {
                let attended = self.attention(&attn.forward(x)?, index, start, session, decoder)?;
                let h = (x + drop_branch(attended)?)?;
                let out = drop_branch(self.mlp(&mlp.forward(&h)?, mlp_kind)?)?;
                Ok((h + out)?)
            }
        }
    }

    fn attention(
        &self,
        x: &Tensor,
        index: usize,
        start: usize,
        session: Option<&mut Session>,
        decoder: &Decoder,
    ) -> Result<Tensor> {
        let _span = tracing::trace_span!("attention").entered();
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
        let (k, v) = match session {
            Some(session) => session.append(index, &k, &v)?,
            None => (k, v),
        };
        let out = attend(&q, &k, &v, Some(start))?;
        let out = out.transpose(1, 2)?.reshape((1, tokens, heads * hd))?;
        self.attn_out.forward(&out)
    }

    fn mlp(&self, x: &Tensor, kind: Mlp) -> Result<Tensor> {
        let _span = tracing::trace_span!("mlp").entered();
        let h = self.mlp_in.forward(x)?;
        let h = match kind {
            Mlp::Gelu => gelu_tanh(&h)?,
            Mlp::SwiGlu => {
                let inner = h.dim(D::Minus1)? / 2;
                let gate = h.narrow(D::Minus1, 0, inner)?;
                let up = h.narrow(D::Minus1, inner, inner)?;
                (silu(&gate)? * up)?
            }
        };
        self.mlp_out.forward(&h)
    }
}

/// Runs `work` on a thread of rayon's pool. A parallel kernel called from any other thread hands
/// its work to the pool and sleeps until a worker has finished it: two thread wake-ups for each
/// of the few hundred kernels of a decode step. Called from a worker, the kernel splits its work
/// there and that worker takes part, so the only wake-up is the other workers'.
fn on_worker<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        work()
    } else {
        rayon::scope(|_| work())
    }
}

#[cfg(test)]
mod tests {
    use super::on_worker;

    #[test]
    fn work_runs_on_a_pool_thread_whoever_calls() {
        assert_eq!(rayon::current_thread_index(), None);
        assert!(on_worker(rayon::current_thread_index).is_some());
        let (caller, inner) = rayon::scope(|_| {
            let caller = rayon::current_thread_index();
            (caller, on_worker(rayon::current_thread_index))
        });
        assert_eq!(inner, caller, "a pool thread runs the work in place");
    }
}
