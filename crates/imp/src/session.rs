//! Per-conversation state: the key/value cache and the position, kept apart from the immutable
//! model so that one loaded model serves many sessions.
//!
//! The cache is one preallocated buffer per layer that new keys and values are written into, not
//! a tensor re-concatenated at every step; it grows geometrically only when a conversation
//! outruns what was reserved.
//!
//! Keys and values are stored in the session's [`KvCache`] format, by default half precision
//! on the CPU: after an image prompt the cache is a large share of what every decode step reads.
//!
//! A session also remembers what each cached position was computed from ([`Position`]), so that
//! a prompt extending an earlier one (the next turn of a conversation) reuses the shared prefix
//! instead of recomputing it.

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device, Tensor};
use imp_kernels::kv::{self, CacheRow};
use sha2::{Digest, Sha256};

use crate::config::DecoderConfig;
use crate::{Error, Result};

/// The storage format of a session's keys and values, which attention reads in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KvCache {
    F32,
    F16,
    BF16,
    /// Signed bytes with one f32 scale per head and token (`imp_kernels::kv`); CPU only.
    Q8,
}

impl KvCache {
    pub const NAMES: [&'static str; 4] = ["f32", "f16", "bf16", "q8"];

    /// The format when none is asked for: f16 on the CPU (half the bytes of f32, and the rows
    /// are widened to f32 as attention reads them), the compute dtype elsewhere.
    pub fn default_for(device: &Device, dtype: DType) -> Self {
        match (device.is_cpu(), dtype) {
            (true, DType::BF16) => Self::BF16,
            (true, _) => Self::F16,
            (false, DType::F16) => Self::F16,
            (false, DType::BF16) => Self::BF16,
            (false, _) => Self::F32,
        }
    }

    /// An error unless `device` can hold and attend over this format.
    pub fn check_device(self, device: &Device) -> Result<()> {
        if self == Self::Q8 && !device.is_cpu() {
            return Err(Error::InvalidArgument(
                "the q8 KV cache is read by the CPU attention kernel only; choose f16 or f32 on \
                 this device"
                    .into(),
            ));
        }
        Ok(())
    }

    /// The candle dtype of the cache tensors (`U8` holds q8 rows).
    fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            Self::BF16 => DType::BF16,
            Self::Q8 => DType::U8,
        }
    }

    /// Stored elements of one head's row of `head_dim` values.
    fn row_len(self, head_dim: usize) -> usize {
        match self {
            Self::Q8 => u8::row_len(head_dim),
            _ => head_dim,
        }
    }

    /// Bytes one token takes in the cache of `config`'s decoder (keys and values, every layer).
    pub fn bytes_per_token(self, config: &DecoderConfig) -> usize {
        2 * config.num_layers
            * config.num_kv_heads
            * self.row_len(config.head_dim)
            * self.dtype().size_in_bytes()
    }

    /// Keys or values `[1, kv_heads, new, head_dim]` in this format.
    fn encode(self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::Q8 => kv::quantize_q8(x)?,
            _ => x.to_dtype(self.dtype())?.contiguous()?,
        })
    }
}

impl fmt::Display for KvCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::BF16 => "bf16",
            Self::Q8 => "q8",
        };
        f.write_str(name)
    }
}

impl FromStr for KvCache {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self> {
        match name {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            "bf16" => Ok(Self::BF16),
            "q8" => Ok(Self::Q8),
            _ => Err(Error::InvalidArgument(format!(
                "unknown KV cache format {name:?} (expected one of {})",
                Self::NAMES.join(", ")
            ))),
        }
    }
}

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
    /// Per layer: keys and values `[1, kv_heads, capacity, row]`, a row being `head_dim`
    /// values in `format`.
    layers: Vec<(Tensor, Tensor)>,
    len: usize,
    /// What the first `positions.len() <= len` cached positions hold; positions fed through
    /// [`crate::llm::Decoder::forward`] directly are not known and never reused.
    positions: Vec<Position>,
    capacity: usize,
    num_layers: usize,
    kv_heads: usize,
    head_dim: usize,
    format: KvCache,
    device: Device,
}

impl Session {
    /// An empty session; `format` must suit `device` ([`KvCache::check_device`]).
    pub fn new(config: &DecoderConfig, format: KvCache, device: &Device) -> Self {
        Self {
            layers: Vec::new(),
            len: 0,
            positions: Vec::new(),
            capacity: 0,
            num_layers: config.num_layers,
            kv_heads: config.num_kv_heads,
            head_dim: config.head_dim,
            format,
            device: device.clone(),
        }
    }

    /// The format keys and values are stored in.
    pub fn kv_cache(&self) -> KvCache {
        self.format
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
        let row = self.format.row_len(self.head_dim);
        let shape = (1, self.kv_heads, capacity, row);
        let dtype = self.format.dtype();
        let mut layers = Vec::with_capacity(self.num_layers);
        for i in 0..self.num_layers {
            let k = Tensor::zeros(shape, dtype, &self.device)?;
            let v = Tensor::zeros(shape, dtype, &self.device)?;
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
    /// and returns views of all keys and values so far, in the cache's format.
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let new = k.dim(2)?;
        let (cache_k, cache_v) = &self.layers[layer];
        cache_k.slice_set(&self.format.encode(k)?, 2, self.len)?;
        cache_v.slice_set(&self.format.encode(v)?, 2, self.len)?;
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
