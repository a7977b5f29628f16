//! The small SIMD vocabulary the fused kernels (`flash`, `norm`, `gelu`, `act`) are written
//! in: each kernel is written once against [`Simd`] and compiled for every path in [`PATHS`],
//! and [`run`] enters the one asked for.
//!
//! Closures must not carry vector code: a closure is a function of its own, compiled without
//! the instruction set's features, so its intrinsics would not inline. Hence plain loops.
//!
//! Soundness rests on tokens: a value of an instruction set's type ([`Scalar`] or the ones in
//! `x86` / `neon`) is only made where the CPU has been seen to support it, so its methods may
//! use the intrinsics. [`run`] calls a [`Kernel`] inside a function compiled with the
//! instruction set's features, into which the kernel's `#[inline(always)]` code is inlined.

#[cfg(target_arch = "aarch64")]
mod neon;
#[cfg(target_arch = "x86_64")]
mod x86;

use half::{bf16, f16};

use crate::cpu::Isa;

/// Vectors of f32 lanes. Loads and stores take slices and panic when they are shorter than a
/// vector; everything else is plain arithmetic.
pub trait Simd: Copy + Send + Sync + 'static {
    /// f32 lanes in a vector.
    const LANES: usize;
    type V: Copy;

    fn splat(self, x: f32) -> Self::V;
    /// The first `LANES` values of `src`.
    fn load(self, src: &[f32]) -> Self::V;
    /// Writes the first `LANES` values of `dst`.
    fn store(self, dst: &mut [f32], v: Self::V);
    fn add(self, a: Self::V, b: Self::V) -> Self::V;
    fn sub(self, a: Self::V, b: Self::V) -> Self::V;
    fn mul(self, a: Self::V, b: Self::V) -> Self::V;
    fn div(self, a: Self::V, b: Self::V) -> Self::V;
    fn max(self, a: Self::V, b: Self::V) -> Self::V;
    fn min(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a * b + c`, with one rounding where the instruction set has FMA.
    fn mul_add(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    fn reduce_sum(self, v: Self::V) -> f32;
    fn reduce_max(self, v: Self::V) -> f32;
    /// Nearest integer, ties to even.
    fn round(self, v: Self::V) -> Self::V;
    /// `2^n` for integral `n` in `-126..=127`.
    fn pow2(self, n: Self::V) -> Self::V;
    fn abs(self, v: Self::V) -> Self::V;
    /// Per lane: `if_neg` where `cond < 0`, else `otherwise`.
    fn select_neg(self, cond: Self::V, if_neg: Self::V, otherwise: Self::V) -> Self::V;

    /// Asks for the cache line at `address` ahead of its use: a hint, never a fault, whatever
    /// the address (the default does nothing).
    #[inline(always)]
    fn prefetch<T>(self, _address: *const T) {}

    /// The first `LANES` values of `src` widened to f32. These defaults go through a lane
    /// buffer; the x86 paths convert in registers.
    #[inline(always)]
    fn load_f16(self, src: &[f16]) -> Self::V {
        let mut buf = [0f32; MAX_LANES];
        for (wide, x) in buf.iter_mut().zip(&src[..Self::LANES]) {
            *wide = x.to_f32();
        }
        self.load(&buf)
    }
    #[inline(always)]
    fn load_bf16(self, src: &[bf16]) -> Self::V {
        let mut buf = [0f32; MAX_LANES];
        for (wide, x) in buf.iter_mut().zip(&src[..Self::LANES]) {
            *wide = x.to_f32();
        }
        self.load(&buf)
    }
    /// The first `LANES` bytes of `src`, read as signed, as f32.
    #[inline(always)]
    fn load_i8(self, src: &[u8]) -> Self::V {
        let mut buf = [0f32; MAX_LANES];
        for (wide, &x) in buf.iter_mut().zip(&src[..Self::LANES]) {
            *wide = f32::from(x as i8);
        }
        self.load(&buf)
    }
    /// Writes integral `v` (as [`Simd::round`] gives) to the first `LANES` bytes of `dst`,
    /// saturating outside `-128..=127`. This default goes through a lane buffer.
    #[inline(always)]
    fn store_i8(self, dst: &mut [i8], v: Self::V) {
        let mut buf = [0f32; MAX_LANES];
        self.store(&mut buf, v);
        for (narrow, &x) in dst[..Self::LANES].iter_mut().zip(&buf) {
            *narrow = x as i8;
        }
    }
}

/// An element type vectors of f32 can be loaded from, widening as they are read.
pub trait Widen: Copy {
    fn load<S: Simd>(s: S, src: &[Self]) -> S::V;
    fn to_f32(self) -> f32;
}

impl Widen for f32 {
    #[inline(always)]
    fn load<S: Simd>(s: S, src: &[f32]) -> S::V {
        s.load(src)
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

impl Widen for f16 {
    #[inline(always)]
    fn load<S: Simd>(s: S, src: &[f16]) -> S::V {
        s.load_f16(src)
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

impl Widen for bf16 {
    #[inline(always)]
    fn load<S: Simd>(s: S, src: &[bf16]) -> S::V {
        s.load_bf16(src)
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}

/// Bytes read as signed (q8 values).
impl Widen for u8 {
    #[inline(always)]
    fn load<S: Simd>(s: S, src: &[u8]) -> S::V {
        s.load_i8(src)
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from(self as i8)
    }
}

/// One lane of plain f32 arithmetic: the portable path every SIMD path is tested against.
#[derive(Debug, Clone, Copy)]
pub struct Scalar;

impl Simd for Scalar {
    const LANES: usize = 1;
    type V = f32;

    #[inline(always)]
    fn splat(self, x: f32) -> f32 {
        x
    }
    #[inline(always)]
    fn load(self, src: &[f32]) -> f32 {
        src[0]
    }
    #[inline(always)]
    fn store(self, dst: &mut [f32], v: f32) {
        dst[0] = v;
    }
    #[inline(always)]
    fn add(self, a: f32, b: f32) -> f32 {
        a + b
    }
    #[inline(always)]
    fn sub(self, a: f32, b: f32) -> f32 {
        a - b
    }
    #[inline(always)]
    fn mul(self, a: f32, b: f32) -> f32 {
        a * b
    }
    #[inline(always)]
    fn div(self, a: f32, b: f32) -> f32 {
        a / b
    }
    #[inline(always)]
    fn max(self, a: f32, b: f32) -> f32 {
        a.max(b)
    }
    #[inline(always)]
    fn min(self, a: f32, b: f32) -> f32 {
        a.min(b)
    }
    #[inline(always)]
    fn mul_add(self, a: f32, b: f32, c: f32) -> f32 {
        // Not `f32::mul_add`: without FMA hardware that is a slow library call.
        a * b + c
    }
    #[inline(always)]
    fn reduce_sum(self, v: f32) -> f32 {
        v
    }
    #[inline(always)]
    fn reduce_max(self, v: f32) -> f32 {
        v
    }
    #[inline(always)]
    fn round(self, v: f32) -> f32 {
        v.round_ties_even()
    }
    #[inline(always)]
    fn pow2(self, n: f32) -> f32 {
        f32::from_bits(((n as i32 + 127) as u32) << 23)
    }
    #[inline(always)]
    fn abs(self, v: f32) -> f32 {
        v.abs()
    }
    #[inline(always)]
    fn select_neg(self, cond: f32, if_neg: f32, otherwise: f32) -> f32 {
        if cond < 0.0 {
            if_neg
        } else {
            otherwise
        }
    }
}

/// Work to run with the best (or a chosen) instruction set.
pub trait Kernel {
    type Output;
    /// Implementations must be `#[inline(always)]`, so that the code lands in the function
    /// compiled with the instruction set's features.
    fn run<S: Simd>(self, s: S) -> Self::Output;
}

/// The instruction sets the fused kernels are compiled for, the slowest first.
pub const PATHS: [Isa; 4] = [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon];

/// The fastest path of the fused kernels this CPU runs.
pub fn best() -> Isa {
    Isa::best_of(&PATHS)
}

/// Runs `kernel` compiled for `isa`. Panics unless `isa` is one of [`PATHS`] and this CPU runs
/// it.
#[inline]
pub fn run<K: Kernel>(isa: Isa, kernel: K) -> K::Output {
    match isa {
        Isa::Scalar => kernel.run(Scalar),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => x86::run_avx2(kernel),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => x86::run_avx512(kernel),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => neon::run_neon(kernel),
        #[allow(unreachable_patterns)]
        _ => panic!("the fused kernels have no {isa:?} path for this CPU"),
    }
}

/// `e^x` within a few ulp over the normal range; it is 0 below `e^-87.33` (so `e^-inf = 0`) and
/// saturates at about `1.6e38` above `e^88`.
#[inline(always)]
pub fn exp<S: Simd>(s: S, x: S::V) -> S::V {
    const LOW: f32 = -87.33;
    const HIGH: f32 = 88.02;
    // ln 2 in two parts: `n * LN2_HI` is exact for the |n| <= 127 used here.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let clamped = s.min(s.max(x, s.splat(LOW)), s.splat(HIGH));
    // e^x = 2^n · e^r with |r| <= ln2 / 2.
    let n = s.round(s.mul(clamped, s.splat(std::f32::consts::LOG2_E)));
    let r = s.mul_add(n, s.splat(-LN2_HI), clamped);
    let r = s.mul_add(n, s.splat(-LN2_LO), r);
    // Taylor series to r^7: the remainder is below 1e-8 relative on that interval.
    let mut p = s.splat(1.0 / 5040.0);
    for c in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = s.mul_add(p, r, s.splat(c));
    }
    let y = s.mul(p, s.pow2(n));
    s.select_neg(s.sub(x, s.splat(LOW)), s.splat(0.0), y)
}

/// GELU with the tanh approximation, `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`, computed as
/// the equal `x / (1 + e^(-2u))`, which needs one exponential and has no cancellation.
#[inline(always)]
pub fn gelu_tanh<S: Simd>(s: S, x: S::V) -> S::V {
    const TWO_SQRT_2_OVER_PI: f32 = 2.0 * 0.797_884_6;
    let x2 = s.mul(x, x);
    let minus_2u = s.mul(
        x,
        s.mul_add(
            x2,
            s.splat(-TWO_SQRT_2_OVER_PI * 0.044715),
            s.splat(-TWO_SQRT_2_OVER_PI),
        ),
    );
    s.div(x, s.add(s.splat(1.0), exp(s, minus_2u)))
}

/// Exact GELU, `0.5·x·(1 + erf(x/√2))`, with erf from Abramowitz & Stegun 7.1.26 (absolute
/// error below 1.5e-7). For `x < 0` the factor `1 + erf` is taken as `erfc(|z|)` directly, so
/// the small results keep their precision.
#[inline(always)]
pub fn gelu_erf<S: Simd>(s: S, x: S::V) -> S::V {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_7,
        -1.453_152_1,
        1.061_405_4,
    ];
    let z = s.mul(x, s.splat(std::f32::consts::FRAC_1_SQRT_2));
    let a = s.abs(z);
    let t = s.div(s.splat(1.0), s.mul_add(a, s.splat(P), s.splat(1.0)));
    let mut poly = s.splat(A[4]);
    for c in [A[3], A[2], A[1], A[0]] {
        poly = s.mul_add(poly, t, s.splat(c));
    }
    let minus_a2 = s.sub(s.splat(0.0), s.mul(a, a));
    // erfc(|z|)
    let tail = s.mul(s.mul(poly, t), exp(s, minus_a2));
    let one_plus_erf = s.select_neg(z, tail, s.sub(s.splat(2.0), tail));
    s.mul(s.mul(x, s.splat(0.5)), one_plus_erf)
}

/// Lanes of the widest vector (AVX-512): the size of tail buffers.
pub const MAX_LANES: usize = 16;

/// The vector at `x[i..]`, where fewer than a vector's worth of values are left padded with
/// `fill`.
#[inline(always)]
pub fn load_or_pad<S: Simd>(s: S, x: &[f32], i: usize, fill: f32) -> S::V {
    let rest = &x[i..];
    if rest.len() >= S::LANES {
        s.load(rest)
    } else {
        let mut buf = [fill; MAX_LANES];
        buf[..rest.len()].copy_from_slice(rest);
        s.load(&buf)
    }
}

/// Stores `v` at `y[i..]`, dropping the lanes past the end.
#[inline(always)]
pub fn store_or_trim<S: Simd>(s: S, y: &mut [f32], i: usize, v: S::V) {
    let rest = &mut y[i..];
    if rest.len() >= S::LANES {
        s.store(rest, v);
    } else {
        let mut buf = [0f32; MAX_LANES];
        s.store(&mut buf, v);
        let n = rest.len();
        rest.copy_from_slice(&buf[..n]);
    }
}

/// `Σ a[i]·b[i]`, `b` widened as it is read (no copy of it).
#[inline(always)]
pub fn dot_widening<S: Simd, E: Widen>(s: S, a: &[f32], b: &[E]) -> f32 {
    assert_eq!(a.len(), b.len());
    let full = a.len() / S::LANES * S::LANES;
    let mut acc = s.splat(0.0);
    for i in (0..full).step_by(S::LANES) {
        acc = s.mul_add(s.load(&a[i..]), E::load(s, &b[i..]), acc);
    }
    let mut sum = s.reduce_sum(acc);
    for i in full..a.len() {
        sum += a[i] * b[i].to_f32();
    }
    sum
}

/// `y += alpha·x`, `x` widened as it is read.
#[inline(always)]
pub fn axpy_widening<S: Simd, E: Widen>(s: S, alpha: f32, x: &[E], y: &mut [f32]) {
    assert_eq!(x.len(), y.len());
    let full = x.len() / S::LANES * S::LANES;
    let splat = s.splat(alpha);
    for i in (0..full).step_by(S::LANES) {
        let v = s.mul_add(splat, E::load(s, &x[i..]), s.load(&y[i..]));
        s.store(&mut y[i..], v);
    }
    for i in full..x.len() {
        y[i] += alpha * x[i].to_f32();
    }
}

/// `y *= alpha`.
#[inline(always)]
pub fn scale<S: Simd>(s: S, alpha: f32, y: &mut [f32]) {
    let alpha = s.splat(alpha);
    for i in (0..y.len()).step_by(S::LANES) {
        let v = s.mul(alpha, load_or_pad(s, y, i, 0.0));
        store_or_trim(s, y, i, v);
    }
}

/// `max x[i]` (`-inf` for an empty slice).
#[inline(always)]
pub fn max<S: Simd>(s: S, x: &[f32]) -> f32 {
    let mut acc = s.splat(f32::NEG_INFINITY);
    for i in (0..x.len()).step_by(S::LANES) {
        acc = s.max(acc, load_or_pad(s, x, i, f32::NEG_INFINITY));
    }
    s.reduce_max(acc)
}

/// Replaces `x[i]` by `e^(x[i] - shift)` and returns their sum.
#[inline(always)]
pub fn exp_sum<S: Simd>(s: S, x: &mut [f32], shift: f32) -> f32 {
    let shift = s.splat(shift);
    let mut sum = s.splat(0.0);
    for i in (0..x.len()).step_by(S::LANES) {
        // Padding lanes are -inf, so they add e^-inf = 0.
        let e = exp(s, s.sub(load_or_pad(s, x, i, f32::NEG_INFINITY), shift));
        sum = s.add(sum, e);
        store_or_trim(s, x, i, e);
    }
    s.reduce_sum(sum)
}
