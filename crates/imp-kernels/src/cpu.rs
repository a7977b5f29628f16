//! The instruction sets the kernels are written for, and which of them this CPU runs: detected
//! once, and asked by every kernel family, which picks the fastest of the paths it has code for.

use std::sync::OnceLock;

/// An instruction set a kernel path is compiled for. Within an architecture each one includes
/// the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// Portable code, the reference every other path is tested against.
    Scalar,
    /// AVX2 with FMA and F16C.
    Avx2,
    /// AVX-512 F.
    Avx512,
    /// AVX-512 F, BW and VNNI.
    Avx512Vnni,
    /// NEON.
    Neon,
    /// NEON with the dot-product extension.
    NeonDotprod,
}

impl Isa {
    /// Every instruction set, the slowest first within an architecture.
    pub const ALL: [Isa; 6] = [
        Isa::Scalar,
        Isa::Avx2,
        Isa::Avx512,
        Isa::Avx512Vnni,
        Isa::Neon,
        Isa::NeonDotprod,
    ];

    /// Whether this CPU runs it: a path's code is only entered then.
    pub fn is_available(self) -> bool {
        CpuFeatures::get().runs(self)
    }

    /// The instruction sets this CPU runs, the fastest last.
    pub fn available() -> Vec<Isa> {
        Self::available_of(&Self::ALL)
    }

    /// Of a kernel family's `paths` (the slowest, [`Isa::Scalar`], first), those this CPU runs.
    pub fn available_of(paths: &[Isa]) -> Vec<Isa> {
        paths
            .iter()
            .copied()
            .filter(|isa| isa.is_available())
            .collect()
    }

    /// The fastest of a kernel family's `paths` (the slowest, [`Isa::Scalar`], first) this CPU
    /// runs.
    pub fn best_of(paths: &[Isa]) -> Isa {
        paths
            .iter()
            .copied()
            .rfind(|isa| isa.is_available())
            .unwrap_or(Isa::Scalar)
    }
}

/// The CPU features the kernels depend on.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuFeatures {
    avx2: bool,
    avx512: bool,
    avx512_vnni: bool,
    neon: bool,
    neon_dotprod: bool,
}

impl CpuFeatures {
    /// This CPU's features, detected on the first call.
    pub fn get() -> &'static CpuFeatures {
        static FEATURES: OnceLock<CpuFeatures> = OnceLock::new();
        FEATURES.get_or_init(Self::detect)
    }

    #[cfg(target_arch = "x86_64")]
    fn detect() -> Self {
        let avx512 = is_x86_feature_detected!("avx512f");
        Self {
            avx2: is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c"),
            avx512,
            avx512_vnni: avx512
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vnni"),
            ..Self::default()
        }
    }

    #[cfg(target_arch = "aarch64")]
    fn detect() -> Self {
        let neon = std::arch::is_aarch64_feature_detected!("neon");
        Self {
            neon,
            neon_dotprod: neon && std::arch::is_aarch64_feature_detected!("dotprod"),
            ..Self::default()
        }
    }

    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    fn detect() -> Self {
        Self::default()
    }

    /// Whether the CPU runs code compiled for `isa`.
    pub fn runs(&self, isa: Isa) -> bool {
        match isa {
            Isa::Scalar => true,
            Isa::Avx2 => self.avx2,
            Isa::Avx512 => self.avx512,
            Isa::Avx512Vnni => self.avx512_vnni,
            Isa::Neon => self.neon,
            Isa::NeonDotprod => self.neon_dotprod,
        }
    }
}
