//! What the fused kernels share with candle: the storage element types they read and write (all
//! arithmetic is f32), the dispatch of a candle op over them, and when a candle op may be replaced
//! by one of them.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

/// A float type a tensor may be stored in; the kernels widen it to f32 and narrow results back.
pub trait Element: Copy + Default + Send + Sync + 'static {
    fn to_f32(src: &[Self], dst: &mut [f32]);
    fn from_f32(src: &[f32], dst: &mut [Self]);
    /// `src` itself when it already is f32, so that the common case copies nothing.
    fn as_f32(_src: &[Self]) -> Option<&[f32]> {
        None
    }
    fn as_f32_mut(_dst: &mut [Self]) -> Option<&mut [f32]> {
        None
    }
    fn into_storage(values: Vec<Self>) -> CpuStorage;
    /// The values of `storage` when it holds this type.
    fn from_storage(storage: &CpuStorage) -> Option<&[Self]>;
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
    fn from_storage(storage: &CpuStorage) -> Option<&[f32]> {
        match storage {
            CpuStorage::F32(values) => Some(values),
            _ => None,
        }
    }
}

/// [`Element`] for a half-precision type, stored in `CpuStorage::$variant`.
macro_rules! half_element {
    ($ty:ty, $variant:ident) => {
        impl Element for $ty {
            fn to_f32(src: &[$ty], dst: &mut [f32]) {
                src.convert_to_f32_slice(dst);
            }
            fn from_f32(src: &[f32], dst: &mut [$ty]) {
                dst.convert_from_f32_slice(src);
            }
            fn into_storage(values: Vec<$ty>) -> CpuStorage {
                CpuStorage::$variant(values)
            }
            fn from_storage(storage: &CpuStorage) -> Option<&[$ty]> {
                match storage {
                    CpuStorage::$variant(values) => Some(values),
                    _ => None,
                }
            }
        }
    };
}

half_element!(f16, F16);
half_element!(bf16, BF16);

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

/// The CPU forward pass of a candle op on `N` operands of one float dtype, written once for
/// every [`Element`] type; wrapped in [`CustomOp`] it is a candle op, which picks the type from
/// the operands' storage.
pub trait FloatOp<const N: usize> {
    /// The op's name in candle's errors.
    const NAME: &'static str;

    fn forward<T: Element>(
        &self,
        operands: [(&[T], &Layout); N],
    ) -> candle_core::Result<(CpuStorage, Shape)>;
}

/// A [`FloatOp`] as a candle custom op of 1, 2 or 3 operands.
pub struct CustomOp<O>(pub O);

impl<O> CustomOp<O> {
    /// The op on operands that share a float dtype; any other mix is an error naming the op.
    fn forward<const N: usize>(
        &self,
        operands: [(&CpuStorage, &Layout); N],
    ) -> candle_core::Result<(CpuStorage, Shape)>
    where
        O: FloatOp<N>,
    {
        if let Some(typed) = typed::<f32, N>(operands) {
            self.0.forward(typed)
        } else if let Some(typed) = typed::<f16, N>(operands) {
            self.0.forward(typed)
        } else if let Some(typed) = typed::<bf16, N>(operands) {
            self.0.forward(typed)
        } else {
            let dtypes = operands.map(|(storage, _)| storage.dtype());
            candle_core::bail!(
                "{}: the operands must share one float dtype, not {dtypes:?}",
                O::NAME
            )
        }
    }
}

impl<O: FloatOp<1>> CustomOp1 for CustomOp<O> {
    fn name(&self) -> &'static str {
        O::NAME
    }

    fn cpu_fwd(&self, x: &CpuStorage, lx: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.forward([(x, lx)])
    }
}

impl<O: FloatOp<2>> CustomOp2 for CustomOp<O> {
    fn name(&self) -> &'static str {
        O::NAME
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        y: &CpuStorage,
        ly: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.forward([(x, lx), (y, ly)])
    }
}

impl<O: FloatOp<3>> CustomOp3 for CustomOp<O> {
    fn name(&self) -> &'static str {
        O::NAME
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        y: &CpuStorage,
        ly: &Layout,
        z: &CpuStorage,
        lz: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.forward([(x, lx), (y, ly), (z, lz)])
    }
}

/// The operands' values when every one holds `T`.
fn typed<'a, T: Element, const N: usize>(
    operands: [(&'a CpuStorage, &'a Layout); N],
) -> Option<[(&'a [T], &'a Layout); N]> {
    let values = operands.map(|(storage, layout)| Some((T::from_storage(storage)?, layout)));
    values
        .iter()
        .all(Option::is_some)
        .then(|| values.map(|v| v.expect("checked")))
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
