//! [`Simd`] for x86-64: AVX2 with FMA (8 lanes) and AVX-512 F (16 lanes).
//!
//! Safety of every `unsafe` block here: the intrinsics need the instruction set of the token
//! type whose method they are in, and a token is only made by `detect` after run-time detection
//! (or, in `run_*`, passed on from it). Loads and stores check the slice length first.

use std::arch::x86_64::*;

use half::{bf16, f16};

use super::{Kernel, Simd};
use crate::cpu::Isa;

/// Proof that the CPU has AVX2, FMA and F16C.
#[derive(Debug, Clone, Copy)]
pub struct Avx2(());

impl Avx2 {
    pub fn detect() -> Option<Self> {
        Isa::Avx2.is_available().then_some(Self(()))
    }
}

/// Proof that the CPU has AVX-512 F.
#[derive(Debug, Clone, Copy)]
pub struct Avx512(());

impl Avx512 {
    pub fn detect() -> Option<Self> {
        Isa::Avx512.is_available().then_some(Self(()))
    }
}

pub fn run_avx2<K: Kernel>(kernel: K) -> K::Output {
    #[target_feature(enable = "avx2,fma,f16c")]
    fn with<K: Kernel>(kernel: K, token: Avx2) -> K::Output {
        kernel.run(token)
    }
    let token = Avx2::detect().expect("this CPU has no AVX2 and FMA");
    // Safety: the token shows the CPU has the features `with` is compiled for.
    unsafe { with(kernel, token) }
}

pub fn run_avx512<K: Kernel>(kernel: K) -> K::Output {
    #[target_feature(enable = "avx512f")]
    fn with<K: Kernel>(kernel: K, token: Avx512) -> K::Output {
        kernel.run(token)
    }
    let token = Avx512::detect().expect("this CPU has no AVX-512 F");
    // Safety: the token shows the CPU has the features `with` is compiled for.
    unsafe { with(kernel, token) }
}

impl Simd for Avx2 {
    const LANES: usize = 8;
    type V = __m256;

    #[inline(always)]
    fn splat(self, x: f32) -> __m256 {
        // Safety: see the module doc.
        unsafe { _mm256_set1_ps(x) }
    }
    #[inline(always)]
    fn load(self, src: &[f32]) -> __m256 {
        assert!(src.len() >= 8);
        // Safety: 8 readable values (asserted); see the module doc.
        unsafe { _mm256_loadu_ps(src.as_ptr()) }
    }
    #[inline(always)]
    fn store(self, dst: &mut [f32], v: __m256) {
        assert!(dst.len() >= 8);
        // Safety: 8 writable values (asserted); see the module doc.
        unsafe { _mm256_storeu_ps(dst.as_mut_ptr(), v) }
    }
    #[inline(always)]
    fn add(self, a: __m256, b: __m256) -> __m256 {
        // Safety: see the module doc.
        unsafe { _mm256_add_ps(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: __m256, b: __m256) -> __m256 {
        // Safety: see the module doc.
        unsafe { _mm256_sub_ps(a, b) }
    }
    #[inline(always)]
    fn mul(self, a: __m256, b: __m256) -> __m256 {
        // Safety: see the module doc.
        unsafe { _mm256_mul_ps(a, b) }
    }
    #[inline(always)]
    fn div(self, a: __m256, b: __m256) -> __m256 {
        // Safety: see the module doc.
        unsafe { _mm256_div_ps(a, b) }
    }
    #[inline(always)]
    fn max(self, a: __m256, b: __m256) -> __m256 {
        // Safety: see the module doc.
        unsafe { _mm256_max_ps(a, b) }
    }
    #[inline(always)]
    fn min(self, a: __m256, b: __m256) -> __m256 {
        // Safety: see the module doc.
        unsafe { _mm256_min_ps(a, b) }
    }
    #[inline(always)]
    fn mul_add(self, a: __m256, b: __m256, c: __m256) -> __m256 {
        // Safety: see the module doc.
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn reduce_sum(self, v: __m256) -> f32 {
        // Safety: see the module doc.
        unsafe {
            let x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let x = _mm_add_ps(x, _mm_movehl_ps(x, x));
            _mm_cvtss_f32(_mm_add_ss(x, _mm_movehdup_ps(x)))
        }
    }
    #[inline(always)]
    fn reduce_max(self, v: __m256) -> f32 {
        // Safety: see the module doc.
        unsafe {
            let x = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let x = _mm_max_ps(x, _mm_movehl_ps(x, x));
            _mm_cvtss_f32(_mm_max_ss(x, _mm_movehdup_ps(x)))
        }
    }
    #[inline(always)]
    fn round(self, v: __m256) -> __m256 {
        // Safety: see the module doc.
        unsafe { _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v) }
    }
    #[inline(always)]
    fn pow2(self, n: __m256) -> __m256 {
        // Safety: see the module doc.
        unsafe {
            let biased = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
            _mm256_castsi256_ps(_mm256_slli_epi32::<23>(biased))
        }
    }
    #[inline(always)]
    fn abs(self, v: __m256) -> __m256 {
        // Safety: see the module doc.
        unsafe { _mm256_andnot_ps(_mm256_set1_ps(-0.0), v) }
    }
    #[inline(always)]
    fn select_neg(self, cond: __m256, if_neg: __m256, otherwise: __m256) -> __m256 {
        // Safety: see the module doc.
        unsafe {
            let negative = _mm256_cmp_ps::<_CMP_LT_OQ>(cond, _mm256_setzero_ps());
            _mm256_blendv_ps(otherwise, if_neg, negative)
        }
    }
    #[inline(always)]
    fn prefetch<T>(self, address: *const T) {
        // Safety: a prefetch reads nothing architecturally and cannot fault.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(address.cast()) }
    }
    #[inline(always)]
    fn load_f16(self, src: &[f16]) -> __m256 {
        assert!(src.len() >= 8);
        // Safety: 8 readable values (asserted); F16C comes with the token, see the module doc.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(src.as_ptr().cast())) }
    }
    #[inline(always)]
    fn load_bf16(self, src: &[bf16]) -> __m256 {
        assert!(src.len() >= 8);
        // Safety: 8 readable values (asserted); see the module doc. A bf16 is the high half
        // of an f32.
        unsafe {
            let wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(src.as_ptr().cast()));
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(wide))
        }
    }
    #[inline(always)]
    fn load_i8(self, src: &[u8]) -> __m256 {
        assert!(src.len() >= 8);
        // Safety: 8 readable bytes (asserted); see the module doc.
        unsafe { _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(src.as_ptr().cast()))) }
    }
    #[inline(always)]
    fn store_i8(self, dst: &mut [i8], v: __m256) {
        assert!(dst.len() >= 8);
        // Safety: 8 writable bytes (asserted); see the module doc.
        unsafe {
            let wide = _mm256_cvtps_epi32(v);
            let halves = (
                _mm256_castsi256_si128(wide),
                _mm256_extracti128_si256::<1>(wide),
            );
            let words = _mm_packs_epi32(halves.0, halves.1);
            _mm_storel_epi64(dst.as_mut_ptr().cast(), _mm_packs_epi16(words, words));
        }
    }
}

impl Simd for Avx512 {
    const LANES: usize = 16;
    type V = __m512;

    #[inline(always)]
    fn splat(self, x: f32) -> __m512 {
        // Safety: see the module doc.
        unsafe { _mm512_set1_ps(x) }
    }
    #[inline(always)]
    fn load(self, src: &[f32]) -> __m512 {
        assert!(src.len() >= 16);
        // Safety: 16 readable values (asserted); see the module doc.
        unsafe { _mm512_loadu_ps(src.as_ptr()) }
    }
    #[inline(always)]
    fn store(self, dst: &mut [f32], v: __m512) {
        assert!(dst.len() >= 16);
        // Safety: 16 writable values (asserted); see the module doc.
        unsafe { _mm512_storeu_ps(dst.as_mut_ptr(), v) }
    }
    #[inline(always)]
    fn add(self, a: __m512, b: __m512) -> __m512 {
        // Safety: see the module doc.
        unsafe { _mm512_add_ps(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: __m512, b: __m512) -> __m512 {
        // Safety: see the module doc.
        unsafe { _mm512_sub_ps(a, b) }
    }
    #[inline(always)]
    fn mul(self, a: __m512, b: __m512) -> __m512 {
        // Safety: see the module doc.
        unsafe { _mm512_mul_ps(a, b) }
    }
    #[inline(always)]
    fn div(self, a: __m512, b: __m512) -> __m512 {
        // Safety: see the module doc.
        unsafe { _mm512_div_ps(a, b) }
    }
    #[inline(always)]
    fn max(self, a: __m512, b: __m512) -> __m512 {
        // Safety: see the module doc.
        unsafe { _mm512_max_ps(a, b) }
    }
    #[inline(always)]
    fn min(self, a: __m512, b: __m512) -> __m512 {
        // Safety: see the module doc.
        unsafe { _mm512_min_ps(a, b) }
    }
    #[inline(always)]
    fn mul_add(self, a: __m512, b: __m512, c: __m512) -> __m512 {
        // Safety: see the module doc.
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn reduce_sum(self, v: __m512) -> f32 {
        // Safety: see the module doc.
        unsafe { _mm512_reduce_add_ps(v) }
    }
    #[inline(always)]
    fn reduce_max(self, v: __m512) -> f32 {
        // Safety: see the module doc.
        unsafe { _mm512_reduce_max_ps(v) }
    }
    #[inline(always)]
    fn round(self, v: __m512) -> __m512 {
        // Safety: see the module doc.
        unsafe { _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v) }
    }
    #[inline(always)]
    fn pow2(self, n: __m512) -> __m512 {
        // Safety: see the module doc.
        unsafe {
            let biased = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
            _mm512_castsi512_ps(_mm512_slli_epi32::<23>(biased))
        }
    }
    #[inline(always)]
    fn abs(self, v: __m512) -> __m512 {
        // Safety: see the module doc.
        unsafe { _mm512_abs_ps(v) }
    }
    #[inline(always)]
    fn select_neg(self, cond: __m512, if_neg: __m512, otherwise: __m512) -> __m512 {
        // Safety: see the module doc.
        unsafe {
            let negative = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(cond, _mm512_setzero_ps());
            _mm512_mask_blend_ps(negative, otherwise, if_neg)
        }
    }
    #[inline(always)]
    fn prefetch<T>(self, address: *const T) {
        // Safety: a prefetch reads nothing architecturally and cannot fault.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(address.cast()) }
    }
    #[inline(always)]
    fn load_f16(self, src: &[f16]) -> __m512 {
        assert!(src.len() >= 16);
        // Safety: 16 readable values (asserted); see the module doc.
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(src.as_ptr().cast())) }
    }
    #[inline(always)]
    fn load_bf16(self, src: &[bf16]) -> __m512 {
        assert!(src.len() >= 16);
        // Safety: 16 readable values (asserted); see the module doc. A bf16 is the high half
        // of an f32.
        unsafe {
            let wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(src.as_ptr().cast()));
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(wide))
        }
    }
    #[inline(always)]
    fn load_i8(self, src: &[u8]) -> __m512 {
        assert!(src.len() >= 16);
        // Safety: 16 readable bytes (asserted); see the module doc.
        unsafe { _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(src.as_ptr().cast()))) }
    }
    #[inline(always)]
    fn store_i8(self, dst: &mut [i8], v: __m512) {
        assert!(dst.len() >= 16);
        // Safety: 16 writable bytes (asserted); see the module doc.
        unsafe {
            let bytes = _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(v));
            _mm_storeu_si128(dst.as_mut_ptr().cast(), bytes);
        }
    }
}
