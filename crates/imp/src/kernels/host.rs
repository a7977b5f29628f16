//! What the fused kernels share with candle: the storage element types they read and write (all
//! arithmetic is f32), and when a candle op may be replaced by one of them.

use candle_core::{CpuStorage, DType, Layout, Tensor};
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

/// A float type a tensor may be stored in; the kernels widen it to f32 and narrow results back.
pub trait Element: Copy + Default + Send + Sync + 'static {
    fn to_f32(src: &[Self], dst: &mut [f32]);
    fn from_f32(src: &[f32], dst: &mut [Self]);
    /// `src` itself when it already is f32, so that the common case copies nothing.
    fn as_f32(src: &[Self]) -> Option<&[f32]>;
    fn as_f32_mut(dst: &mut [Self]) -> Option<&mut [f32]>;
    fn into_storage(values: Vec<Self>) -> CpuStorage;
}

impl Element for f32 {
    fn to_f32(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    fn from_f32(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    fn as_f32(src: &[f32]) -> Option<&[f32]> {
        Some(src)
    }
    fn as_f32_mut(dst: &mut [f32]) -> Option<&mut [f32]> {
        Some(dst)
    }
    fn into_storage(values: Vec<f32>) -> CpuStorage {
        CpuStorage::F32(values)
    }
}

impl Element for f16 {
    fn to_f32(src: &[f16], dst: &mut [f32]) {
        src.convert_to_f32_slice(dst);
    }
    fn from_f32(src: &[f32], dst: &mut [f16]) {
        dst.convert_from_f32_slice(src);
    }
    fn as_f32(_: &[f16]) -> Option<&[f32]> {
        None
    }
    fn as_f32_mut(_: &mut [f16]) -> Option<&mut [f32]> {
        None
    }
    fn into_storage(values: Vec<f16>) -> CpuStorage {
        CpuStorage::F16(values)
    }
}

impl Element for bf16 {
    fn to_f32(src: &[bf16], dst: &mut [f32]) {
        src.convert_to_f32_slice(dst);
    }
    fn from_f32(src: &[f32], dst: &mut [bf16]) {
        dst.convert_from_f32_slice(src);
    }
    fn as_f32(_: &[bf16]) -> Option<&[f32]> {
        None
    }
    fn as_f32_mut(_: &mut [bf16]) -> Option<&mut [f32]> {
        None
    }
    fn into_storage(values: Vec<bf16>) -> CpuStorage {
        CpuStorage::BF16(values)
    }
}

/// `src` as f32: borrowed when it is f32, else widened into `buf`.
pub fn widen<'a, T: Element>(src: &'a [T], buf: &'a mut Vec<f32>) -> &'a [f32] {
    match T::as_f32(src) {
        Some(values) => values,
        None => {
            buf.resize(src.len(), 0.0);
            T::to_f32(src, buf);
            buf
        }
    }
}

/// Runs `f` on `dst` as f32: `dst` itself when it is f32, else a buffer narrowed into `dst`
/// afterwards.
pub fn narrow_into<T: Element>(dst: &mut [T], f: impl FnOnce(&mut [f32])) {
    match T::as_f32_mut(dst) {
        Some(dst) => f(dst),
        None => {
            let mut buf = vec![0f32; dst.len()];
            f(&mut buf);
            T::from_f32(&buf, dst);
        }
    }
}

/// Whether our CPU kernels may stand in for candle's ops on these tensors: all on the CPU, in
/// one float dtype, and none tracked for gradients (the kernels have no backward pass, so
/// training keeps candle's differentiable ops).
pub fn fast_path(tensors: &[&Tensor]) -> bool {
    let Some(first) = tensors.first() else {
        return false;
    };
    matches!(first.dtype(), DType::F32 | DType::F16 | DType::BF16)
        && tensors
            .iter()
            .all(|t| t.device().is_cpu() && t.dtype() == first.dtype() && !t.track_op())
}

/// The values of a contiguous layout.
pub fn contiguous<'a, T>(values: &'a [T], layout: &Layout) -> candle_core::Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&values[start..end]),
        None => candle_core::bail!("the fused kernels take contiguous tensors"),
    }
}
