//! 4-bit GGML weights (Q4_0 and Q4_K) repacked for our own matrix kernels.
//!
//! Both formats store a matrix `[out, in]` row by row, 4-bit values in blocks along `in` with
//! per-block scales. The packed types regroup the rows into tiles of 16 (lanes) so that one
//! SIMD register holds the same 4 bytes of 16 rows; the tiles are read front to back, which the
//! hardware prefetchers follow at full memory bandwidth. Each packed type keeps one copy of the
//! weights, and what it computes is exactly the GGML format's values times the activations.
//!
//! `y = x · Wᵀ` quantizes `x` per 32-value block to int8 ([`act`]), takes integer dot products
//! per 32 values (exact) and scales them with both sides' scales, as GGML's own products with
//! q8 activations do. The SIMD paths ([`Isa`]) are chosen at run time; each kernel call
//! multiplies one tile with up to [`MAX_ROWS`] activation rows, so batched inputs reuse every
//! loaded weight register. The output rows are split over candle's thread count, one contiguous
//! range of tiles per thread.

mod act;
#[cfg(target_arch = "aarch64")]
mod neon;
#[cfg(target_arch = "aarch64")]
mod neon_k;
mod q4_0;
mod q4_k;
#[cfg(target_arch = "x86_64")]
mod x86;
#[cfg(target_arch = "x86_64")]
mod x86_k;

use std::marker::PhantomData;
use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, Shape};
use rayon::prelude::*;

use crate::{Error, Result};
use act::{Activations, Rows};
pub use q4_0::PackedQ4_0;
pub use q4_k::PackedQ4K;

/// Values per activation block (and per Q4_0 block and Q4_K sub-block).
const BLOCK: usize = 32;
/// Output rows per tile.
const LANES: usize = 16;
/// Activation rows one kernel call multiplies with a tile.
pub const MAX_ROWS: usize = 8;

/// A kernel for tiles of type `T`: `out[r][lane]` = the dot product of row `r` of `rows` with
/// lane `lane` of the tile; `out.len() == rows.len()`, at most [`MAX_ROWS`].
type Kernel<T> = fn(T, Rows<'_>, &mut [[f32; LANES]]);

/// The instruction sets the kernels are written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// Portable integer arithmetic, the reference the others are tested against.
    Scalar,
    /// AVX2 with FMA and F16C.
    Avx2,
    /// AVX-512 F, BW and VNNI.
    Avx512Vnni,
    /// NEON with the dot-product extension.
    NeonDotprod,
}

impl Isa {
    /// The instruction sets this CPU runs, the fastest last.
    pub fn available() -> Vec<Isa> {
        [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni, Isa::NeonDotprod]
            .into_iter()
            .filter(|isa| isa.is_available())
            .collect()
    }

    /// The fastest instruction set of this CPU.
    pub fn best() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| *Isa::available().last().expect("the scalar path"))
    }

    /// Whether this CPU runs it: the kernels for an instruction set are handed out only then.
    pub fn is_available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "aarch64")]
            Isa::NeonDotprod => std::arch::is_aarch64_feature_detected!("dotprod"),
            _ => false,
        }
    }

    fn unavailable(self) -> Error {
        Error::InvalidArgument(format!("this CPU cannot run the {self:?} 4-bit kernels"))
    }
}

/// Checks GGML bytes of a matrix `[out, in_features]` stored in blocks of `block` values and
/// `block_bytes` bytes, and returns the blocks per row.
fn ggml_blocks_per_row(
    format: &str,
    data: &[u8],
    out: usize,
    in_features: usize,
    block: usize,
    block_bytes: usize,
) -> Result<usize> {
    if in_features == 0 || !in_features.is_multiple_of(block) {
        return Err(Error::InvalidArgument(format!(
            "{format} needs an input width that is a positive multiple of {block}, not \
             {in_features}"
        )));
    }
    let blocks = in_features / block;
    let bytes = out * blocks * block_bytes;
    if data.len() != bytes {
        return Err(Error::InvalidArgument(format!(
            "{format} matrix [{out}, {in_features}] needs {bytes} bytes, got {}",
            data.len()
        )));
    }
    Ok(blocks)
}

/// `y[m, out] = x[m, blocks · 32] · Wᵀ` for a matrix of `out` rows whose tile `t` is `tile(t)`.
fn matmul<T: Copy>(
    kernel: Kernel<T>,
    tile: impl Fn(usize) -> T + Sync,
    out: usize,
    blocks: usize,
    x: &[f32],
    y: &mut [f32],
) -> Result<()> {
    let width = blocks * BLOCK;
    let m = x.len() / width;
    if x.len() != m * width || y.len() != m * out {
        return Err(Error::InvalidArgument(format!(
            "4-bit matmul [{out}, {width}]: input of {} values, output of {}",
            x.len(),
            y.len()
        )));
    }
    let act = Activations::quantize(x, blocks);
    let tiles = out.div_ceil(LANES);
    let tasks = candle_core::utils::get_num_threads().clamp(1, tiles);
    // Activation rows per pass over a task's tiles: about 256 KiB of int8 values, so they stay
    // in the L2 cache while the weights stream past.
    let chunk = (262_144 / width).clamp(MAX_ROWS, 64) / MAX_ROWS * MAX_ROWS;
    let output = Output::new(y, out);
    // One contiguous range of tiles per thread: each streams its weights front to back.
    (0..tasks).into_par_iter().for_each(|task| {
        let tile_range = task * tiles / tasks..(task + 1) * tiles / tasks;
        for first in (0..m).step_by(chunk) {
            let rows_end = m.min(first + chunk);
            for t in tile_range.clone() {
                for row in (first..rows_end).step_by(MAX_ROWS) {
                    let rows = act.slice(row, MAX_ROWS.min(rows_end - row));
                    let mut acc = [[0f32; LANES]; MAX_ROWS];
                    let acc = &mut acc[..rows.len()];
                    kernel(tile(t), rows, acc);
                    output.write(row, t * LANES, acc);
                }
            }
        }
    });
    Ok(())
}

/// `y[m, out]` written by several threads at once, each to the columns of its own tiles.
struct Output<'a> {
    ptr: *mut f32,
    len: usize,
    cols: usize,
    _y: PhantomData<&'a mut [f32]>,
}

// Safety: `write` callers write disjoint elements (each task owns its tiles' columns), and the
// borrow of `y` outlives every task.
unsafe impl Send for Output<'_> {}
unsafe impl Sync for Output<'_> {}

impl<'a> Output<'a> {
    fn new(y: &'a mut [f32], cols: usize) -> Self {
        Self {
            ptr: y.as_mut_ptr(),
            len: y.len(),
            cols,
            _y: PhantomData,
        }
    }

    /// `y[row + r][col..col + 16] = values[r]`, the columns past `cols` dropped.
    fn write(&self, row: usize, col: usize, values: &[[f32; LANES]]) {
        let width = LANES.min(self.cols - col);
        for (r, values) in values.iter().enumerate() {
            let at = (row + r) * self.cols + col;
            assert!(at + width <= self.len);
            // Safety: in bounds (asserted); no other task writes these columns (see above).
            unsafe {
                std::ptr::copy_nonoverlapping(values.as_ptr(), self.ptr.add(at), width);
            }
        }
    }
}

/// The `CustomOp1` forward of a packed matrix `[out, width]`: `x[.., width]` (contiguous f32)
/// `-> [.., out]` by `matmul(x, y)`.
fn cpu_fwd(
    name: &str,
    out: usize,
    width: usize,
    storage: &CpuStorage,
    layout: &Layout,
    matmul: impl Fn(&[f32], &mut [f32]) -> Result<()>,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{name} takes f32, not {:?}", storage.dtype());
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{name} takes a contiguous input");
    };
    let mut dims = layout.shape().dims().to_vec();
    if dims.last() != Some(&width) {
        candle_core::bail!("{name} of a [{out}, {width}] matrix cannot take an input {dims:?}");
    }
    let x = &data[start..end];
    let mut y = vec![0f32; x.len() / width * out];
    matmul(x, &mut y).map_err(candle_core::Error::wrap)?;
    *dims.last_mut().expect("a last dimension") = out;
    Ok((CpuStorage::F32(y), Shape::from(dims)))
}
