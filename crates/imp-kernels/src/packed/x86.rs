//! What the x86-64 kernels of both formats share.

/// Reads activation bytes `i..i + 4` of a row as one i32, to broadcast.
///
/// Safety: `i + 4 <= len` of the row `x` points to.
#[inline(always)]
pub unsafe fn quad(x: *const i8, i: usize) -> i32 {
    x.add(i).cast::<i32>().read_unaligned()
}
