//! What the x86-64 kernels of both formats share.

/// Reads activation bytes `i..i + 4` of a row as one i32, to broadcast.
///
/// Safety: `i + 4 <= len` of the row `x` points to.
#[inline(always)]
pub unsafe fn quad(x: *const i8, i: usize) -> i32 {
    x.add(i).cast::<i32>().read_unaligned()
}

/// Where each of `R` rows' slice starts (`row(r)` is row `r`'s). The kernels read activations,
/// scales and sums per block through these pointers: bounds checks of slices in that loop had
/// halved the AVX-512 VNNI kernels' rate at 128 rows (AMD EPYC, Zen 4 class).
#[inline(always)]
pub(crate) fn row_pointers<'a, T: 'a, const R: usize>(
    row: impl Fn(usize) -> &'a [T],
) -> [*const T; R] {
    std::array::from_fn(|r| row(r).as_ptr())
}

/// How far ahead of its loads an AVX-512 kernel asks for weight lines. Intel cores keep too few
/// lines in flight for one weight stream per core without it (Xeon, 2 threads: one-row q4_k
/// from 0.76-0.81 to 0.82-0.94 of the bandwidth probe, `benches/packed.rs`); 4 KB ahead was no
/// better.
pub(crate) const PREFETCH_BYTES: usize = 2048;
