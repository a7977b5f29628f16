//! What the x86-64 kernels of both formats share.

use super::MAX_ROWS;

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

/// `$kernel::<R>(args)` for `R = $rows`, one of `1..=MAX_ROWS`: the AVX-512 kernels take all
/// of a call's rows at once, their per-row registers sized by the const parameter.
macro_rules! with_row_count {
    ($rows:expr, $kernel:ident($($arg:expr),*)) => {
        match $rows {
            1 => $kernel::<1>($($arg),*),
            2 => $kernel::<2>($($arg),*),
            3 => $kernel::<3>($($arg),*),
            4 => $kernel::<4>($($arg),*),
            5 => $kernel::<5>($($arg),*),
            6 => $kernel::<6>($($arg),*),
            7 => $kernel::<7>($($arg),*),
            _ => $kernel::<8>($($arg),*),
        }
    };
}
pub(crate) use with_row_count;

// `with_row_count` has one arm per row count up to this.
const _: () = assert!(MAX_ROWS == 8);
