//! Per-conversation state: the key/value cache and the position, kept apart from the immutable
//! model so that one loaded model serves many sessions.
//!
//! The cache is one preallocated buffer per layer that new keys and values are written into, not
//! a tensor re-concatenated at every step; it grows geometrically only when a conversation
//! outruns what was reserved.

use candle_core::{DType, Device, Tensor};

use crate::llm::DecoderConfig;
use crate::Result;

pub struct Session {
    /// Per layer: keys and values `[1, kv_heads, capacity, head_dim]`.
    layers: Vec<(Tensor, Tensor)>,
    len: usize,
    capacity: usize,
    num_layers: usize,
    kv_heads: usize,
    head_dim: usize,
    dtype: DType,
    device: Device,
}

impl Session {
    pub fn new(config: &DecoderConfig, dtype: DType, device: &Device) -> Self {
        Self {
            layers: Vec::new(),
            len: 0,
            capacity: 0,
            num_layers: config.num_layers,
            kv_heads: config.num_kv_heads,
            head_dim: config.head_dim,
            dtype,
            device: device.clone(),
        }
    }

    /// Tokens (text and image rows) already in the cache: the next token's position.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Makes room for `total` tokens in all, so that a whole generation runs without reallocating.
    pub fn reserve(&mut self, total: usize) -> Result<()> {
        if total <= self.capacity {
            return Ok(());
        }
        let capacity = total.max(2 * self.capacity);
        let shape = (1, self.kv_heads, capacity, self.head_dim);
        let mut layers = Vec::with_capacity(self.num_layers);
        for i in 0..self.num_layers {
            let k = Tensor::zeros(shape, self.dtype, &self.device)?;
            let v = Tensor::zeros(shape, self.dtype, &self.device)?;
            if self.len > 0 {
                let (old_k, old_v) = &self.layers[i];
                k.slice_set(&old_k.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
                v.slice_set(&old_v.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
            }
            layers.push((k, v));
        }
        self.layers = layers;
        self.capacity = capacity;
        Ok(())
    }

    /// Forgets everything after the first `len` tokens, keeping a shared prefix for reuse.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Stores layer `layer`'s keys and values for the new tokens `[1, kv_heads, new, head_dim]`
    /// and returns views of all keys and values so far.
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let new = k.dim(2)?;
        let (cache_k, cache_v) = &self.layers[layer];
        cache_k.slice_set(&k.contiguous()?, 2, self.len)?;
        cache_v.slice_set(&v.contiguous()?, 2, self.len)?;
        Ok((
            cache_k.narrow(2, 0, self.len + new)?,
            cache_v.narrow(2, 0, self.len + new)?,
        ))
    }

    /// Marks `new` tokens as stored once every layer has appended them.
    pub(crate) fn advance(&mut self, new: usize) {
        self.len += new;
    }
}
