//! The storage formats of the key/value cache, which the fused attention reads in place: one row
//! per head and token, in f32, f16, bf16, or q8.
//!
//! After an image prompt the cache is a large part of what each decode step reads (Phi-2 at
//! 793 tokens: 0.52 GB in f32 against 1.5 GB of 4-bit weights), so a narrower cache is a faster
//! decode. A q8 row is `head_dim` signed bytes followed by the row's f32 scale (little endian):
//! value `i` is `row[i] as i8 · scale`, `scale = max |x| / 127`. One scale per head and token
//! keeps the row self-contained, so that appending a token never touches an earlier one.

use candle_core::{CpuStorage, Layout, Shape, Tensor};
use half::{bf16, f16};

use crate::host::{widen, CustomOp, Element, FloatOp};
use crate::simd::Widen;
use crate::{Error, Result};

/// Bytes after a q8 row's values: its f32 scale.
pub const Q8_SCALE_BYTES: usize = 4;

/// A type the cache rows are stored in: a float [`Element`] (one per value), or `u8` for q8
/// rows.
pub trait CacheRow: Copy + Send + Sync + 'static {
    /// Storage elements of a row of `head_dim` values.
    fn row_len(head_dim: usize) -> usize;
    /// The values in a row of `row_len` elements, if that length is one of this format's.
    fn head_dim(row_len: usize) -> Option<usize>;
    /// A row's values as f32: borrowed when they are stored as f32, else decoded into `buf`.
    fn decode<'a>(row: &'a [Self], buf: &'a mut Vec<f32>) -> &'a [f32];
    /// What a row's values are stored as, read into vectors of f32 as they are used.
    type Value: Widen;
    /// A row's values and the factor they are multiplied by (1 but for q8).
    fn values(row: &[Self]) -> (&[Self::Value], f32);
    /// The values of `storage` when it holds this type.
    fn from_storage(storage: &CpuStorage) -> Option<&[Self]>;
}

macro_rules! float_rows {
    ($($ty:ty),*) => {$(
        impl CacheRow for $ty {
            #[inline(always)]
            fn row_len(head_dim: usize) -> usize {
                head_dim
            }
            fn head_dim(row_len: usize) -> Option<usize> {
                Some(row_len)
            }
            #[inline(always)]
            fn decode<'a>(row: &'a [$ty], buf: &'a mut Vec<f32>) -> &'a [f32] {
                widen(row, buf)
            }
            fn from_storage(storage: &CpuStorage) -> Option<&[$ty]> {
                <$ty as Element>::from_storage(storage)
            }
            type Value = $ty;
            #[inline(always)]
            fn values(row: &[$ty]) -> (&[$ty], f32) {
                (row, 1.0)
            }
        }
    )*};
}

float_rows!(f32, f16, bf16);

/// q8 rows (see the module documentation).
impl CacheRow for u8 {
    #[inline(always)]
    fn row_len(head_dim: usize) -> usize {
        head_dim + Q8_SCALE_BYTES
    }
    fn head_dim(row_len: usize) -> Option<usize> {
        row_len.checked_sub(Q8_SCALE_BYTES)
    }
    #[inline(always)]
    fn decode<'a>(row: &'a [u8], buf: &'a mut Vec<f32>) -> &'a [f32] {
        let (values, scale) = Self::values(row);
        buf.resize(values.len(), 0.0);
        // A plain loop, so that it vectorises inside the caller's instruction-set function.
        for (out, &q) in buf.iter_mut().zip(values) {
            *out = f32::from(q as i8) * scale;
        }
        buf
    }
    fn from_storage(storage: &CpuStorage) -> Option<&[u8]> {
        match storage {
            CpuStorage::U8(values) => Some(values),
            _ => None,
        }
    }
    /// Signed bytes.
    type Value = u8;
    #[inline(always)]
    fn values(row: &[u8]) -> (&[u8], f32) {
        let (values, scale) = row.split_at(row.len() - Q8_SCALE_BYTES);
        let scale = f32::from_le_bytes(scale.try_into().expect("four scale bytes"));
        (values, scale)
    }
}

/// Quantizes rows of `head_dim` values into q8 rows of `out`.
pub fn quantize_q8_rows(values: &[f32], head_dim: usize, out: &mut [u8]) -> Result<()> {
    let row_len = u8::row_len(head_dim);
    if head_dim == 0 || !values.len().is_multiple_of(head_dim) {
        return Err(Error::operands(
            "q8 cache rows",
            format!("{} values are no whole rows of {head_dim}", values.len()),
        ));
    }
    if out.len() != values.len() / head_dim * row_len {
        return Err(Error::operands(
            "q8 cache rows",
            format!(
                "{} bytes cannot hold {} rows of {row_len}",
                out.len(),
                values.len() / head_dim
            ),
        ));
    }
    for (row, out) in values
        .chunks_exact(head_dim)
        .zip(out.chunks_exact_mut(row_len))
    {
        let amax = row.iter().fold(0f32, |m, x| m.max(x.abs()));
        let scale = amax / 127.0;
        let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        let (bytes, scale_bytes) = out.split_at_mut(head_dim);
        for (byte, &x) in bytes.iter_mut().zip(row) {
            *byte = (x * inverse).round_ties_even().clamp(-127.0, 127.0) as i8 as u8;
        }
        scale_bytes.copy_from_slice(&scale.to_le_bytes());
    }
    Ok(())
}

/// Rows `[.., head_dim]` of a float CPU tensor (any layout) as a contiguous `u8` tensor of q8
/// rows `[.., head_dim + Q8_SCALE_BYTES]`.
pub fn quantize_q8(x: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1_no_bwd(&CustomOp(QuantizeQ8))?)
}

struct QuantizeQ8;

impl FloatOp<1> for QuantizeQ8 {
    const NAME: &'static str = "imp-quantize-q8";

    fn forward<T: Element>(
        &self,
        [(values, layout)]: [(&[T], &Layout); 1],
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let values = crate::host::contiguous(values, layout)?;
        let mut dims = layout.dims().to_vec();
        let head_dim = dims.last().copied().unwrap_or(0);
        let mut wide = Vec::new();
        let wide = widen(values, &mut wide);
        let mut out = vec![0u8; wide.len() / head_dim.max(1) * u8::row_len(head_dim)];
        quantize_q8_rows(wide, head_dim, &mut out).map_err(candle_core::Error::wrap)?;
        if let Some(last) = dims.last_mut() {
            *last = u8::row_len(head_dim);
        }
        Ok((CpuStorage::U8(out), Shape::from(dims)))
    }
}

/// The f32 values `[.., head_dim]` of a CPU tensor of q8 rows (any layout): what the fused
/// attention reads, for the paths that attend with candle's ops.
pub fn dequantize_q8(rows: &Tensor) -> Result<Tensor> {
    let rows = rows.contiguous()?;
    let mut dims = rows.dims().to_vec();
    let head_dim = dims
        .last()
        .and_then(|&len| u8::head_dim(len))
        .ok_or_else(|| Error::operands("q8 cache rows", format!("shape {dims:?}")))?;
    let bytes = rows.flatten_all()?.to_vec1::<u8>()?;
    let mut values = Vec::with_capacity(bytes.len() / u8::row_len(head_dim) * head_dim);
    let mut buf = Vec::new();
    for row in bytes.chunks_exact(u8::row_len(head_dim)) {
        values.extend_from_slice(u8::decode(row, &mut buf));
    }
    if let Some(last) = dims.last_mut() {
        *last = head_dim;
    }
    Ok(Tensor::from_vec(values, dims, rows.device())?)
}
