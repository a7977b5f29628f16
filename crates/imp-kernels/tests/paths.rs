//! Which code runs: the instruction sets detected, and where the kernels stand in for candle.

use candle_core::DType;
use imp_kernels::host::fast_path;
use imp_kernels::Isa;

use crate::support::tensor;

/// CI names the instruction sets its machine must detect (the aarch64 run under `qemu -cpu max`
/// expects `Neon,NeonDotprod`), so that a detection bug cannot quietly leave only the scalar
/// paths tested.
#[test]
fn expected_instruction_sets_are_detected() {
    let Ok(expected) = std::env::var("IMP_EXPECT_ISA") else {
        return;
    };
    let available = Isa::available();
    eprintln!("instruction sets of this CPU: {available:?}");
    for name in expected.split(',') {
        assert!(
            available.iter().any(|isa| format!("{isa:?}") == name),
            "{name} expected, detected {available:?}"
        );
    }
}

#[test]
fn tensors_that_track_gradients_keep_candles_ops() {
    let x = tensor(vec![1.0; 8], &[2, 4]);
    let var = candle_core::Var::from_tensor(&x).unwrap();
    assert!(fast_path(&[&x, &x]));
    assert!(!fast_path(&[&x, var.as_tensor()]));
    assert!(!fast_path(&[&x, &x.to_dtype(DType::F64).unwrap()]));
    assert!(!fast_path(&[&x, &x.to_dtype(DType::F16).unwrap()]));
}
