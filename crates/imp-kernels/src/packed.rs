//! GGML block weights (Q4_0, Q4_K, Q8_0) repacked for our own matrix kernels.
//!
//! The formats store a matrix `[out, in]` row by row, 4- or 8-bit values in blocks along `in` with
//! per-block scales. The packed types regroup the rows into tiles of 16 (lanes) so that one
//! SIMD register holds the same 4 bytes of 16 rows; the tiles are read front to back, which the
//! hardware prefetchers follow at full memory bandwidth. Each packed type keeps one copy of the
//! weights, and what it computes is exactly the GGML format's values times the activations.
//!
//! `y = x · Wᵀ` quantizes `x` to int8 (`act.rs`; one scale per 32 values, or per 256 for
//! Q4_K), takes integer dot products per 32 values (exact) and scales them with both sides'
//! scales, as GGML's own products with q8_0 and q8_K activations do. A format
//! ([`PackedFormat`]) says how its tiles are laid out and brings one kernel per path of
//! [`PATHS`] ([`Kernels`]); everything else is written once
//! here: the checks, the activation quantization and the tile loop, where each kernel call
//! multiplies one tile with up to [`MAX_ROWS`] activation rows, so batched inputs reuse every
//! loaded weight register. The output rows are split over candle's thread count, one contiguous
//! range of tiles per thread.

#[cfg(target_arch = "aarch64")]
pub(crate) mod neon;
pub(crate) mod scaled;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86;

use std::fmt;
use std::marker::PhantomData;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape};
use rayon::prelude::*;

use crate::act::{Activations, Rows, BLOCK};
use crate::cpu::Isa;
use crate::{Error, Result};

/// Output rows per tile.
pub const LANES: usize = 16;
/// Activation rows one kernel call multiplies with a tile.
pub const MAX_ROWS: usize = 8;

/// The instruction sets the block-format kernels are written for, the slowest first.
pub const PATHS: [Isa; 4] = [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni, Isa::NeonDotprod];

/// The path [`Packed::matmul`] takes on this CPU: the fastest of [`PATHS`] it runs. Public so
/// that reports (`imp bench`) name the kernel that was measured.
pub fn best() -> Isa {
    Isa::best_of(&PATHS)
}

/// A kernel for tiles of type `T`: `out[r][lane]` = the dot product of row `r` of `rows` with
/// lane `lane` of the tile; `out.len() == rows.len()`, at most [`MAX_ROWS`].
pub(crate) type Kernel<T> = fn(T, Rows<'_>, &mut [[f32; LANES]]);

/// A format's kernels, one per path of [`PATHS`] this architecture compiles.
pub struct Kernels<T> {
    pub(crate) scalar: Kernel<T>,
    #[cfg(target_arch = "x86_64")]
    pub(crate) avx2: Kernel<T>,
    #[cfg(target_arch = "x86_64")]
    pub(crate) avx512_vnni: Kernel<T>,
    #[cfg(target_arch = "aarch64")]
    pub(crate) neon_dotprod: Kernel<T>,
}

impl<T> Kernels<T> {
    /// The kernel for `isa`, where this CPU runs it.
    fn get(&self, isa: Isa) -> Option<Kernel<T>> {
        if !isa.is_available() {
            return None;
        }
        match isa {
            Isa::Scalar => Some(self.scalar),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => Some(self.avx2),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => Some(self.avx512_vnni),
            #[cfg(target_arch = "aarch64")]
            Isa::NeonDotprod => Some(self.neon_dotprod),
            _ => None,
        }
    }
}

/// A GGML block format in the tile layout: how its GGML blocks look, how it repacks them, what
/// one tile is, and its kernels. Implemented by the crate's formats only.
pub trait PackedFormat: 'static {
    /// The format's name in messages.
    const NAME: &'static str;
    /// Values of a GGML block: a multiple of 32.
    const GGML_BLOCK: usize;
    /// Bytes of a GGML block.
    const GGML_BLOCK_BYTES: usize;
    /// 32-value activation blocks per activation scale: 1 as GGML's q8_0, or the 8 of its
    /// q8_K, which lets a k-quant kernel apply both sides' scales once per super-block.
    const ACT_GROUP: usize;
    /// The packed arrays of a whole matrix.
    type Store: Send + Sync;
    /// A view of one tile's part of them, what the kernels take.
    type Tile<'a>: Copy;

    /// Repacks the GGML bytes of `out` rows of `ggml_blocks` blocks each (lengths checked).
    fn repack(data: &[u8], out: usize, ggml_blocks: usize) -> Self::Store;
    /// Tile `t` of a matrix of `ggml_blocks` blocks per row.
    fn tile(store: &Self::Store, ggml_blocks: usize, t: usize) -> Self::Tile<'_>;
    /// Panics unless the tile holds `blocks` 32-value blocks per lane: the SIMD kernels' pointer
    /// arithmetic relies on it.
    fn check(tile: &Self::Tile<'_>, blocks: usize);
    /// Bytes the kernels stream per product: nibbles and scales, tile padding included.
    fn size_in_bytes(store: &Self::Store) -> usize;
    /// The format's kernel for each path.
    fn kernels<'a>() -> Kernels<Self::Tile<'a>>;
}

/// Panics unless `isa` runs here and the lengths fit: a SIMD kernel's pointer arithmetic and
/// instructions rely on both.
pub(crate) fn check_call<F: PackedFormat>(
    isa: Isa,
    tile: &F::Tile<'_>,
    rows: &Rows<'_>,
    out: &[[f32; LANES]],
) {
    assert!(isa.is_available());
    F::check(tile, rows.blocks());
    assert_eq!(rows.group(), F::ACT_GROUP);
    assert_eq!(out.len(), rows.len());
    assert!((1..=MAX_ROWS).contains(&out.len()));
}

/// Calls `kernel` on groups of at most `group` of the rows (as many as its registers hold), with
/// their outputs.
#[inline(always)]
pub(crate) fn in_groups(
    rows: Rows<'_>,
    out: &mut [[f32; LANES]],
    group: usize,
    mut kernel: impl FnMut(Rows<'_>, &mut [[f32; LANES]]),
) {
    for (first, out) in (0..rows.len()).step_by(group).zip(out.chunks_mut(group)) {
        kernel(rows.slice(first, out.len()), out);
    }
}

/// A block-format matrix `[out, in]` of format `F` in its tile layout.
pub struct Packed<F: PackedFormat> {
    out: usize,
    /// GGML blocks per row.
    ggml_blocks: usize,
    store: F::Store,
}

impl<F: PackedFormat> fmt::Debug for Packed<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Packed {}[{}, {}]",
            F::NAME,
            self.out,
            self.in_features()
        )
    }
}

impl<F: PackedFormat> Packed<F> {
    /// Repacks the GGML bytes of a matrix `[out, in]`, `in` a multiple of the format's block.
    pub fn from_ggml(data: &[u8], out: usize, in_features: usize) -> Result<Self> {
        let (block, block_bytes) = (F::GGML_BLOCK, F::GGML_BLOCK_BYTES);
        if in_features == 0 || !in_features.is_multiple_of(block) {
            return Err(Error::operands(
                F::NAME,
                format!(
                    "needs an input width that is a positive multiple of {block}, not \
                     {in_features}"
                ),
            ));
        }
        let ggml_blocks = in_features / block;
        let bytes = out * ggml_blocks * block_bytes;
        if data.len() != bytes {
            return Err(Error::operands(
                F::NAME,
                format!(
                    "matrix [{out}, {in_features}] needs {bytes} bytes, got {}",
                    data.len()
                ),
            ));
        }
        Ok(Self {
            out,
            ggml_blocks,
            store: F::repack(data, out, ggml_blocks),
        })
    }

    pub fn out_features(&self) -> usize {
        self.out
    }

    pub fn in_features(&self) -> usize {
        self.ggml_blocks * F::GGML_BLOCK
    }

    /// Bytes the kernels stream per product: nibbles and scales, tile padding included.
    pub fn size_in_bytes(&self) -> usize {
        F::size_in_bytes(&self.store)
    }

    /// `y[m, out] = x[m, in] · Wᵀ` with the fastest kernel of this CPU.
    pub fn matmul(&self, x: &[f32], y: &mut [f32]) -> Result<()> {
        self.matmul_with(best(), x, y)
    }

    /// `y[m, out] = x[m, in] · Wᵀ` with the kernel for `isa`, one of [`PATHS`].
    pub fn matmul_with(&self, isa: Isa, x: &[f32], y: &mut [f32]) -> Result<()> {
        let kernel = F::kernels().get(isa).ok_or(Error::NoPath {
            kernels: F::NAME,
            isa,
        })?;
        let tile = |t| F::tile(&self.store, self.ggml_blocks, t);
        let blocks = self.in_features() / BLOCK;
        matmul(kernel, tile, self.out, (blocks, F::ACT_GROUP), x, y)
    }
}

/// `y[m, out] = x[m, blocks · 32] · Wᵀ` for a matrix of `out` rows whose tile `t` is `tile(t)`,
/// the activations quantized with one scale per `group` blocks.
fn matmul<T: Copy>(
    kernel: Kernel<T>,
    tile: impl Fn(usize) -> T + Sync,
    out: usize,
    (blocks, group): (usize, usize),
    x: &[f32],
    y: &mut [f32],
) -> Result<()> {
    let width = blocks * BLOCK;
    let m = x.len() / width;
    if x.len() != m * width || y.len() != m * out {
        return Err(Error::operands(
            "block-format matmul",
            format!(
                "[{out}, {width}]: input of {} values, output of {}",
                x.len(),
                y.len()
            ),
        ));
    }
    let act = Activations::quantize(x, blocks, group);
    let tiles = out.div_ceil(LANES);
    let tasks = candle_core::utils::get_num_threads().clamp(1, tiles);
    // Activation rows per pass over a task's tiles: about 256 KiB of int8 values, so they stay
    // in the L2 cache while the weights stream past.
    let chunk = (262_144 / width).clamp(MAX_ROWS, 64) / MAX_ROWS * MAX_ROWS;
    let output = Output::new(y, out);
    // One contiguous range of tiles per thread: each streams its weights front to back.
    (0..tasks).into_par_iter().for_each(|task| {
        let tile_range = task * tiles / tasks..(task + 1) * tiles / tasks;
        // Kernels overwrite their outputs, so one buffer serves every call without zeroing.
        let mut acc = [[0f32; LANES]; MAX_ROWS];
        for first in (0..m).step_by(chunk) {
            let rows_end = m.min(first + chunk);
            for t in tile_range.clone() {
                for row in (first..rows_end).step_by(MAX_ROWS) {
                    let rows = act.slice(row, MAX_ROWS.min(rows_end - row));
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

/// A packed matrix `[out, in]` as a candle op: `x[.., in]` (contiguous f32) `-> [.., out]`.
impl<F: PackedFormat> CustomOp1 for Packed<F> {
    fn name(&self) -> &'static str {
        F::NAME
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (name, out, width) = (F::NAME, self.out, self.in_features());
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("{name} matmul takes f32, not {:?}", storage.dtype());
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("{name} matmul takes a contiguous input");
        };
        let mut dims = layout.shape().dims().to_vec();
        if dims.last() != Some(&width) {
            candle_core::bail!(
                "{name} matmul of a [{out}, {width}] matrix cannot take an input {dims:?}"
            );
        }
        let x = &data[start..end];
        let mut y = vec![0f32; x.len() / width * out];
        self.matmul(x, &mut y).map_err(candle_core::Error::wrap)?;
        *dims.last_mut().expect("a last dimension") = out;
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }
}
