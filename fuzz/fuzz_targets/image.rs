//! An image file decoded as PIL would, then preprocessed both ways (squashed and padded).
#![no_main]

use candle_core::Device;
use imp::config::AspectMode;
use imp::preprocess::{decode_rgb, ImagePreprocessor};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(image) = decode_rgb(data, "fuzz") else {
        return;
    };
    // Resizing a legitimately huge picture is slow, not wrong: keep iterations fast.
    if u64::from(image.width()) * u64::from(image.height()) > 1 << 22 {
        return;
    }
    for aspect in [AspectMode::Squash, AspectMode::Pad] {
        let _ = ImagePreprocessor::new(28, aspect).preprocess(&image, &Device::Cpu);
    }
});
