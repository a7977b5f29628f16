//! What the x86-64 kernels of both formats share.

/// Reads activation bytes `i..i + 4` of a row as one i32, to broadcast.
///
/// Safety: `i + 4 <= len` of the row `x` points to.
#[inline(always)]
pub unsafe fn quad(x: *const i8, i: usize) -> i32 {
    x.add(i).cast::<i32>().read_unaligned()
}

/// How far ahead of its loads an AVX-512 kernel asks for weight lines. Intel cores keep too few
/// lines in flight for one weight stream per core without it (Xeon, 2 threads: one-row q4_k
/// from 0.76-0.81 to 0.82-0.94 of the bandwidth probe, `benches/packed.rs`); 4 KB ahead was no
/// better.
pub(crate) const PREFETCH_BYTES: usize = 2048;
