//! Per-conversation state: the key/value cache and the position, kept apart from the immutable
//! model so that one loaded model serves many sessions.
//!
//! The cache is one preallocated buffer per layer that new keys and values are written into, not
//! a tensor re-concatenated at every step; it grows geometrically only when a conversation
//! outruns what was reserved.
//!
//! A session also remembers what each cached position was computed from ([`Position`]), so that
//! a prompt extending an earlier one (the next turn of a conversation) reuses the shared prefix
//! instead of recomputing it.

use candle_core::{DType, Device, Tensor};
use sha2::{Digest, Sha256};

use crate::config::DecoderConfig;
use crate::Result;

/// Names an image's projected rows for prefix reuse: equal ids must mean equal rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageId(pub [u8; 32]);

impl ImageId {
    /// The SHA-256 of an encoded image file: collisions cannot be forged, so one client's
    /// image can never be mistaken for another's.
    pub fn of_bytes(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// The id of decoded pixels (size and RGB bytes).
    pub fn of_image(image: &image::RgbImage) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(image.width().to_le_bytes());
        hasher.update(image.height().to_le_bytes());
        hasher.update(image.as_raw());
        Self(hasher.finalize().into())
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// What one position of a spliced sequence is computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    Token(u32),
    /// Row `row` of an image's projected rows.
    ImageRow(ImageId, u32),
}

pub struct Session {
    /// Per layer: keys and values `[1, kv_heads, capacity, head_dim]`.
    layers: Vec<(Tensor, Tensor)>,
    len: usize,
    /// What the first `positions.len() <= len` cached positions hold; positions fed through
    /// [`crate::llm::Decoder::forward`] directly are not known and never reused.
    positions: Vec<Position>,
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
            positions: Vec::new(),
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
        self.positions.truncate(len);
    }

    /// What the known prefix of the cache holds.
    pub fn positions(&self) -> &[Position] {
        &self.positions
    }

    /// How many leading `positions` this session already holds.
    pub fn common_prefix(&self, positions: &[Position]) -> usize {
        self.positions
            .iter()
            .zip(positions)
            .take_while(|(a, b)| a == b)
            .count()
    }

    /// Records what the last `new.len()` positions, just fed, were computed from. Call it only
    /// when every earlier position is known (see [`Self::truncate`]).
    pub(crate) fn record(&mut self, new: &[Position]) {
        debug_assert_eq!(self.positions.len() + new.len(), self.len);
        self.positions.extend_from_slice(new);
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
