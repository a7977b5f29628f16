//! [`Simd`] for AArch64 NEON (4 lanes).
//!
//! Safety of every `unsafe` block here: the intrinsics need NEON, and a [`Neon`] token is only
//! made by `detect` after run-time detection (or, in `run_neon`, passed on from it). Loads and
//! stores check the slice length first.

use std::arch::aarch64::*;

use super::{Kernel, Simd};
use crate::cpu::Isa;

/// Proof that the CPU has NEON.
#[derive(Debug, Clone, Copy)]
pub struct Neon(());

impl Neon {
    pub fn detect() -> Option<Self> {
        Isa::Neon.is_available().then_some(Self(()))
    }
}

pub fn run_neon<K: Kernel>(kernel: K) -> K::Output {
    #[target_feature(enable = "neon")]
    fn with<K: Kernel>(kernel: K, token: Neon) -> K::Output {
        kernel.run(token)
    }
    let token = Neon::detect().expect("this CPU has no NEON");
    // Safety: the token shows the CPU has the features `with` is compiled for.
    unsafe { with(kernel, token) }
}

impl Simd for Neon {
    const LANES: usize = 4;
    type V = float32x4_t;

    #[inline(always)]
    fn splat(self, x: f32) -> float32x4_t {
        // Safety: see the module doc.
        unsafe { vdupq_n_f32(x) }
    }
    #[inline(always)]
    fn load(self, src: &[f32]) -> float32x4_t {
        assert!(src.len() >= 4);
        // Safety: 4 readable values (asserted); see the module doc.
        unsafe { vld1q_f32(src.as_ptr()) }
    }
    #[inline(always)]
    fn store(self, dst: &mut [f32], v: float32x4_t) {
        assert!(dst.len() >= 4);
        // Safety: 4 writable values (asserted); see the module doc.
        unsafe { vst1q_f32(dst.as_mut_ptr(), v) }
    }
    #[inline(always)]
    fn add(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
        // Safety: see the module doc.
        unsafe { vaddq_f32(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
        // Safety: see the module doc.
        unsafe { vsubq_f32(a, b) }
    }
    #[inline(always)]
    fn mul(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
        // Safety: see the module doc.
        unsafe { vmulq_f32(a, b) }
    }
    #[inline(always)]
    fn div(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
        // Safety: see the module doc.
        unsafe { vdivq_f32(a, b) }
    }
    #[inline(always)]
    fn max(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
        // Safety: see the module doc.
        unsafe { vmaxq_f32(a, b) }
    }
    #[inline(always)]
    fn min(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
        // Safety: see the module doc.
        unsafe { vminq_f32(a, b) }
    }
    #[inline(always)]
    fn mul_add(self, a: float32x4_t, b: float32x4_t, c: float32x4_t) -> float32x4_t {
        // Safety: see the module doc.
        unsafe { vfmaq_f32(c, a, b) }
    }
    #[inline(always)]
    fn reduce_sum(self, v: float32x4_t) -> f32 {
        // Safety: see the module doc.
        unsafe { vaddvq_f32(v) }
    }
    #[inline(always)]
    fn reduce_max(self, v: float32x4_t) -> f32 {
        // Safety: see the module doc.
        unsafe { vmaxvq_f32(v) }
    }
    #[inline(always)]
    fn round(self, v: float32x4_t) -> float32x4_t {
        // Safety: see the module doc.
        unsafe { vrndnq_f32(v) }
    }
    #[inline(always)]
    fn pow2(self, n: float32x4_t) -> float32x4_t {
        // Safety: see the module doc.
        unsafe {
            let biased = vaddq_s32(vcvtnq_s32_f32(n), vdupq_n_s32(127));
            vreinterpretq_f32_s32(vshlq_n_s32::<23>(biased))
        }
    }
    #[inline(always)]
    fn abs(self, v: float32x4_t) -> float32x4_t {
        // Safety: see the module doc.
        unsafe { vabsq_f32(v) }
    }
    #[inline(always)]
    fn select_neg(
        self,
        cond: float32x4_t,
        if_neg: float32x4_t,
        otherwise: float32x4_t,
    ) -> float32x4_t {
        // Safety: see the module doc.
        unsafe { vbslq_f32(vcltzq_f32(cond), if_neg, otherwise) }
    }
    #[inline(always)]
    fn store_i8(self, dst: &mut [i8], v: float32x4_t) {
        assert!(dst.len() >= 4);
        // Safety: 4 writable bytes (asserted), written unaligned; see the module doc.
        unsafe {
            let words = vqmovn_s32(vcvtnq_s32_f32(v));
            let bytes = vqmovn_s16(vcombine_s16(words, words));
            let word = vget_lane_s32::<0>(vreinterpret_s32_s8(bytes));
            dst.as_mut_ptr().cast::<i32>().write_unaligned(word);
        }
    }
}
