//! Image preprocessing, byte-identical to the reference (Pillow 13 + transformers):
//!
//! 1. decode and convert to RGB the way `PIL.Image.open(path).convert("RGB")` does ([`decode_rgb`]);
//! 2. for `image_aspect_ratio == "pad"`, LLaVA's `expand2square`: centre on a square canvas of
//!    side `max(W, H)` filled with `int(0.5 * 255) = 127`;
//! 3. `Image.resize((S, S), Image.BICUBIC)`, ignoring aspect ratio ([`pil_bicubic_resize`]);
//! 4. rescale by 1/255, normalise with mean 0.5 / std 0.5, CHW f32.
//!
//! Steps 2–4 reproduce Pillow bit for bit (including the normalised floats), and so does step 1
//! for PNG, GIF, BMP, TIFF and lossless WebP: `tests/preprocess.rs` checks every image and mode in
//! `tests/fixtures/preprocess` against Pillow's own output. JPEG is decoded by zune-jpeg rather
//! than libjpeg-turbo, so its pixels can differ slightly.
//!
//! JPEG decoder difference (zune-jpeg vs Pillow 13's libjpeg-turbo 3.2, per channel value, on the
//! 4 photos and the CMYK JPEG of the fixtures): on the decoded pixels, max abs 4 and mean abs
//! 0.08–0.28 for 4:2:0 chroma subsampling (the chroma upsampling differs), max abs 2 and mean abs
//! 0.008–0.013 for 4:4:4 and CMYK; after the resize to 384 or 196 (square and pad), max abs 4,
//! mean abs at most 0.31. The test asserts max ≤ 4 and mean ≤ 0.35.
//!
//! Pillow's `convert("RGB")`, and so [`decode_rgb`], per source mode (each checked against
//! Pillow 13): alpha (RGBA, LA, palette + tRNS, GIF and WebP transparency) is dropped, not
//! composited; gray is replicated; palette indices past the palette's end are black; 16-bit RGB,
//! RGBA and gray+alpha PNGs keep the high byte; 16-bit gray (Pillow's mode `I;16`, with or without
//! tRNS) is CLIPPED to 0..=255, not scaled, so most of a 16-bit gray photo comes out white; 1- and
//! 4-bit gray are scaled to 0..=255; Adobe CMYK JPEG is inverted and multiplied out with K
//! (zune-jpeg's formula equals Pillow's for all 65536 (C, K) pairs).

use std::borrow::Cow;
use std::io::Cursor;
use std::ops::Range;
use std::path::Path;

use candle_core::{Device, Tensor};
use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits, RgbImage};

use crate::config::AspectMode;
use crate::{Error, Result};

/// Largest accepted image side, in pixels.
pub const MAX_SIDE: u32 = 16_384;
/// Largest accepted image area, in pixels (128 MP).
pub const MAX_PIXELS: u64 = 128 << 20;
/// Decoder allocation cap: a [`MAX_PIXELS`] image at 16-bit RGBA, the widest layout we decode.
const MAX_DECODE_BYTES: u64 = MAX_PIXELS * 8;

/// The PNG end chunk: empty, so always these 12 bytes (length, type, CRC).
const PNG_IEND: [u8; 12] = [0, 0, 0, 0, b'I', b'E', b'N', b'D', 0xAE, 0x42, 0x60, 0x82];

/// LLaVA pads with `tuple(int(x * 255) for x in image_mean)`, and Imp's mean is 0.5.
const PAD_FILL: u8 = 127;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagePreprocessor {
    pub image_size: usize,
    pub aspect: AspectMode,
}

impl ImagePreprocessor {
    pub fn new(image_size: usize, aspect: AspectMode) -> Self {
        Self { image_size, aspect }
    }

    /// PIL-exact uint8 S×S RGB after pad + bicubic resize.
    pub fn resize(&self, image: &RgbImage) -> RgbImage {
        let size = u32::try_from(self.image_size).expect("image size fits in u32");
        match self.aspect {
            AspectMode::Pad if image.width() != image.height() => {
                pil_bicubic_resize(&expand_to_square(image), size, size)
            }
            _ => pil_bicubic_resize(image, size, size),
        }
    }

    /// Normalised CHW f32 tensor of shape (1, 3, S, S) on `device`.
    pub fn preprocess(&self, image: &RgbImage, device: &Device) -> Result<Tensor> {
        let resized = self.resize(image);
        let plane = self.image_size * self.image_size;
        let mut chw = vec![0f32; 3 * plane];
        let lut = normalization_table();
        for (i, pixel) in resized.pixels().enumerate() {
            for (c, &value) in pixel.0.iter().enumerate() {
                chw[c * plane + i] = lut[usize::from(value)];
            }
        }
        Ok(Tensor::from_vec(
            chw,
            (1, 3, self.image_size, self.image_size),
            device,
        )?)
    }
}

/// transformers' `rescale` multiplies in f64 and casts to f32; `normalize` then works in f32.
/// Doing the same gives the reference's exact floats.
fn normalization_table() -> [f32; 256] {
    std::array::from_fn(|v| ((v as f64 * (1.0 / 255.0)) as f32 - 0.5) / 0.5)
}

/// LLaVA's `expand2square`: paste at ((side - W) / 2, (side - H) / 2) on a `PAD_FILL` canvas.
fn expand_to_square(image: &RgbImage) -> RgbImage {
    let (width, height) = image.dimensions();
    let side = width.max(height);
    let mut canvas = RgbImage::from_pixel(side, side, image::Rgb([PAD_FILL; 3]));
    let (x, y) = ((side - width) / 2, (side - height) / 2);
    image::imageops::replace(&mut canvas, image, x.into(), y.into());
    canvas
}

/// Read a file and decode it (missing file -> Error::Io naming the path).
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    let bytes = crate::files::read(path, crate::files::limits::IMAGE_BYTES)?;
    decode_rgb(&bytes, &path.display().to_string())
}

/// Decode bytes (PNG, JPEG, WebP, GIF, BMP, TIFF) and convert to RGB the way PIL's
/// convert("RGB") does.
pub fn decode_rgb(bytes: &[u8], source_name: &str) -> Result<RgbImage> {
    let fail = |message: String| Error::image(source_name, message);
    let format = image::guess_format(bytes).map_err(|_| {
        fail("not an image: unknown format (PNG, JPEG, WebP, GIF, BMP or TIFF expected)".into())
    })?;
    // libjpeg, and so Pillow, refuses a JPEG that stops before its end-of-image marker, whereas
    // zune-jpeg returns whatever it could decode.
    if format == ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        return Err(fail(
            "truncated JPEG: the data ends before the end-of-image marker".into(),
        ));
    }
    let decode_error = |e: ImageError| fail(describe(format, &e));
    // Pillow stops reading after the image data, so it accepts a PNG cut just before its IEND
    // chunk; the png crate insists on reading it, so give it one.
    let bytes = if format == ImageFormat::Png && !bytes.ends_with(&PNG_IEND) {
        Cow::Owned([bytes, &PNG_IEND].concat())
    } else {
        Cow::Borrowed(bytes)
    };

    let mut reader = ImageReader::with_format(Cursor::new(bytes.as_ref()), format);
    let mut limits = Limits::default();
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    // The decoder has read only the header here: check the size before anything is allocated.
    let decoder = reader.into_decoder().map_err(decode_error)?;
    let (width, height) = decoder.dimensions();
    check_dimensions(width, height, source_name)?;
    let decoded = DynamicImage::from_decoder(decoder).map_err(decode_error)?;
    let png_gray = format == ImageFormat::Png && png_color_type(&bytes) == Some(0);
    to_rgb(decoded, png_gray).map_err(fail)
}

/// An image handed over as pixels (RGB8, `stride` bytes from one row's start to the next),
/// as an app holding a camera frame has it.
pub fn rgb_from_rows(
    pixels: &[u8],
    width: u32,
    height: u32,
    stride: usize,
    source_name: &str,
) -> Result<RgbImage> {
    let fail = |message: String| Error::image(source_name, message);
    check_dimensions(width, height, source_name)?;
    let row = 3 * width as usize;
    if stride < row {
        return Err(fail(format!(
            "a row of {width} RGB pixels needs {row} bytes, but the stride is {stride}"
        )));
    }
    let needed = stride * (height as usize - 1) + row;
    if pixels.len() < needed {
        return Err(fail(format!(
            "{width}×{height} RGB pixels with stride {stride} need {needed} bytes, the buffer has {}",
            pixels.len()
        )));
    }
    let mut packed = Vec::with_capacity(row * height as usize);
    for y in 0..height as usize {
        packed.extend_from_slice(&pixels[y * stride..y * stride + row]);
    }
    RgbImage::from_raw(width, height, packed).ok_or_else(|| fail("inconsistent size".into()))
}

/// Refuses an empty image, or one over [`MAX_SIDE`] or [`MAX_PIXELS`].
pub fn check_dimensions(width: u32, height: u32, source_name: &str) -> Result<()> {
    let fail = |message: String| Err(Error::image(source_name, message));
    if width == 0 || height == 0 {
        return fail(format!("empty image ({width}×{height} pixels)"));
    }
    if width > MAX_SIDE || height > MAX_SIDE || u64::from(width) * u64::from(height) > MAX_PIXELS {
        return fail(format!(
            "{width}×{height} pixels is too large (at most {MAX_SIDE} pixels per side and {} MP)",
            MAX_PIXELS >> 20
        ));
    }
    Ok(())
}

fn describe(format: ImageFormat, error: &ImageError) -> String {
    let name = format!("{format:?}").to_uppercase();
    match error {
        ImageError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            format!("truncated {name}: the data ends early")
        }
        ImageError::Limits(e) => format!("{name} too large to decode: {e}"),
        ImageError::Unsupported(e) => format!("unsupported {name}: {e}"),
        e => format!("corrupt or truncated {name}: {e}"),
    }
}

/// Entropy-coded data never holds a bare 0xFF marker byte, so the image is complete iff an EOI
/// (FF D9) follows the last start-of-scan (FF DA).
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    bytes
        .windows(2)
        .rposition(|w| w == [0xFF, 0xDA])
        .is_some_and(|scan| bytes[scan..].windows(2).any(|w| w == [0xFF, 0xD9]))
}

/// The colour type in a PNG's IHDR (always the first chunk: 8-byte signature, length, "IHDR",
/// width, height, bit depth, then colour type at byte 25).
fn png_color_type(bytes: &[u8]) -> Option<u8> {
    (bytes.get(12..16)? == b"IHDR").then(|| bytes.get(25).copied())?
}

/// Pillow's `convert("RGB")` for every layout the decoders produce. `png_gray` says a 16-bit
/// gray+alpha image is really 16-bit gray with a tRNS colour (the png crate turns tRNS into alpha),
/// which Pillow opens as `I;16` and clips, rather than true gray+alpha, which it reduces to its
/// high byte.
fn to_rgb(image: DynamicImage, png_gray: bool) -> std::result::Result<RgbImage, String> {
    fn map<P: image::Pixel>(
        image: &image::ImageBuffer<P, Vec<P::Subpixel>>,
        f: impl Fn(&[P::Subpixel]) -> [u8; 3],
    ) -> RgbImage {
        let data = image.pixels().flat_map(|p| f(p.channels())).collect();
        RgbImage::from_raw(image.width(), image.height(), data).expect("one RGB triple per pixel")
    }
    let high = |v: u16| (v >> 8) as u8;
    let clip = |v: u16| v.min(255) as u8;
    Ok(match image {
        DynamicImage::ImageRgb8(rgb) => rgb,
        DynamicImage::ImageRgba8(im) => map(&im, |p| [p[0], p[1], p[2]]),
        DynamicImage::ImageLuma8(im) => map(&im, |p| [p[0]; 3]),
        DynamicImage::ImageLumaA8(im) => map(&im, |p| [p[0]; 3]),
        DynamicImage::ImageLuma16(im) => map(&im, |p| [clip(p[0]); 3]),
        DynamicImage::ImageLumaA16(im) if png_gray => map(&im, |p| [clip(p[0]); 3]),
        DynamicImage::ImageLumaA16(im) => map(&im, |p| [high(p[0]); 3]),
        DynamicImage::ImageRgb16(im) => map(&im, |p| [high(p[0]), high(p[1]), high(p[2])]),
        DynamicImage::ImageRgba16(im) => map(&im, |p| [high(p[0]), high(p[1]), high(p[2])]),
        other => return Err(format!("unsupported pixel layout {:?}", other.color())),
    })
}

/// Fixed-point fraction bits of Pillow's 8-bit resampler: 32 bits less 8 for the value and 2 for
/// the overshoot of bicubic's negative lobes.
const PRECISION_BITS: u32 = 22;
const BICUBIC_SUPPORT: f64 = 2.0;

/// Pillow's bicubic kernel (Keys, a = -0.5), written in the same operation order so the f64
/// results, and thus the rounded fixed-point weights, are identical.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// The resampling weights of one axis: for output index i, `count[i]` source samples from
/// `start[i]` with fixed-point weights `weights[i * stride..][..count[i]]`.
struct Taps {
    start: Vec<usize>,
    count: Vec<usize>,
    weights: Vec<i32>,
    stride: usize,
}

impl Taps {
    /// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for the whole source range.
    fn new(in_size: u32, out_size: u32) -> Self {
        let scale = f64::from(in_size) / f64::from(out_size);
        // Downscaling widens the kernel by the factor: that is the antialiasing.
        let filter_scale = scale.max(1.0);
        let support = BICUBIC_SUPPORT * filter_scale;
        let stride = support.ceil() as usize * 2 + 1;
        let inv_filter_scale = 1.0 / filter_scale;
        let out_len = out_size as usize;
        let mut taps = Self {
            start: Vec::with_capacity(out_len),
            count: Vec::with_capacity(out_len),
            weights: vec![0; out_len * stride],
            stride,
        };
        let mut row = vec![0f64; stride];
        for (i, fixed) in taps.weights.chunks_exact_mut(stride).enumerate() {
            let center = (i as f64 + 0.5) * scale;
            // `as` truncates toward zero like Pillow's `(int)` casts.
            let start = ((center - support + 0.5) as i64).max(0) as usize;
            let end = ((center + support + 0.5) as i64).min(i64::from(in_size)) as usize;
            let count = end.saturating_sub(start);
            let mut sum = 0.0;
            for (j, w) in row[..count].iter_mut().enumerate() {
                *w = bicubic(((start + j) as f64 - center + 0.5) * inv_filter_scale);
                sum += *w;
            }
            for (dst, &w) in fixed.iter_mut().zip(&row[..count]) {
                let w = if sum != 0.0 { w / sum } else { w };
                let scaled = w * f64::from(1u32 << PRECISION_BITS);
                *dst = if w < 0.0 {
                    (scaled - 0.5) as i32
                } else {
                    (scaled + 0.5) as i32
                };
            }
            taps.start.push(start);
            taps.count.push(count);
        }
        taps
    }

    fn get(&self, i: usize) -> (usize, &[i32]) {
        let count = self.count[i];
        (self.start[i], &self.weights[i * self.stride..][..count])
    }
}

/// Rounding offset and clip of Pillow's `clip8`: the weights sum to 1 << PRECISION_BITS.
const HALF: i32 = 1 << (PRECISION_BITS - 1);

fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow's `Image.resize((width, height), Image.BICUBIC)` on an RGB image, byte for byte:
/// a horizontal pass over only the source rows the vertical pass will read, then a vertical pass,
/// each rounded and clipped to u8; a pass whose side keeps its length is skipped.
pub fn pil_bicubic_resize(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (in_width, in_height) = image.dimensions();
    if (in_width, in_height) == (width, height) {
        return image.clone();
    }
    if width == 0 || height == 0 {
        return RgbImage::new(width, height);
    }
    let horizontal = (width != in_width).then(|| Taps::new(in_width, width));
    let vertical = (height != in_height).then(|| Taps::new(in_height, height));

    let rows = match &vertical {
        Some(v) => {
            let last = height as usize - 1;
            v.start[0]..v.start[last] + v.count[last]
        }
        None => 0..in_height as usize,
    };
    let (stage, first_row) = match &horizontal {
        Some(h) => (
            Cow::Owned(resample_rows(image, rows.clone(), h)),
            rows.start,
        ),
        None => (Cow::Borrowed(image.as_raw().as_slice()), 0),
    };
    let out = match &vertical {
        Some(v) => resample_columns(&stage, width as usize * 3, first_row, v),
        None => stage.into_owned(),
    };
    RgbImage::from_raw(width, height, out).expect("resampler output has width × height pixels")
}

/// Horizontal pass over source rows `rows`.
fn resample_rows(image: &RgbImage, rows: Range<usize>, taps: &Taps) -> Vec<u8> {
    let out_width = taps.start.len();
    let mut out = Vec::with_capacity(rows.len() * out_width * 3);
    let row_len = image.width() as usize * 3;
    for row in image.as_raw()[rows.start * row_len..rows.end * row_len].chunks_exact(row_len) {
        for x in 0..out_width {
            let (start, weights) = taps.get(x);
            let mut acc = [HALF; 3];
            for (pixel, &w) in row[start * 3..].chunks_exact(3).zip(weights) {
                for (a, &v) in acc.iter_mut().zip(pixel) {
                    *a += i32::from(v) * w;
                }
            }
            out.extend(acc.map(clip8));
        }
    }
    out
}

/// Vertical pass; `src` holds rows from `first_row` on. Accumulates whole rows at a time so the
/// inner loop runs over contiguous memory.
fn resample_columns(src: &[u8], row_len: usize, first_row: usize, taps: &Taps) -> Vec<u8> {
    let out_height = taps.start.len();
    let mut out = vec![0u8; out_height * row_len];
    let mut acc = vec![0i32; row_len];
    for (y, dst) in out.chunks_exact_mut(row_len).enumerate() {
        let (start, weights) = taps.get(y);
        acc.fill(HALF);
        for (j, &w) in weights.iter().enumerate() {
            let row = &src[(start - first_row + j) * row_len..][..row_len];
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += i32::from(v) * w;
            }
        }
        for (d, &a) in dst.iter_mut().zip(&acc) {
            *d = clip8(a);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x * 7 + y) as u8, (y * 13) as u8, ((x ^ y) * 31) as u8])
        })
    }

    #[test]
    fn aspect_mode_parses_config_values() {
        assert_eq!(
            AspectMode::from_config("square").unwrap(),
            AspectMode::Squash
        );
        assert_eq!(AspectMode::from_config("pad").unwrap(), AspectMode::Pad);
        let err = AspectMode::from_config("anyres").unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument(m) if m.contains("anyres")),
            "{err}"
        );
    }

    #[test]
    fn weights_are_normalised_and_cover_the_source() {
        for (input, output) in [(600, 384), (23, 384), (1411, 196), (5, 3), (7, 1)] {
            let taps = Taps::new(input, output);
            for i in 0..output as usize {
                let (start, weights) = taps.get(i);
                let sum: i32 = weights.iter().sum();
                // Each weight is rounded on its own, so the sum may miss by one per tap.
                assert!(
                    (sum - (1 << PRECISION_BITS)).abs() <= weights.len() as i32,
                    "{sum}"
                );
                assert!(start + weights.len() <= input as usize);
            }
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        let image = RgbImage::from_pixel(37, 23, image::Rgb([0, 127, 255]));
        for (w, h) in [(384, 384), (5, 3), (37, 100), (100, 23)] {
            let out = pil_bicubic_resize(&image, w, h);
            assert_eq!(out.dimensions(), (w, h));
            assert!(out.pixels().all(|p| p.0 == [0, 127, 255]));
        }
    }

    #[test]
    fn same_size_is_a_copy() {
        let image = gradient(37, 23);
        assert_eq!(pil_bicubic_resize(&image, 37, 23), image);
    }

    #[test]
    fn pad_centres_on_grey_with_floor_offsets() {
        let image = gradient(5, 2);
        let square = expand_to_square(&image);
        assert_eq!(square.dimensions(), (5, 5));
        // (5 - 2) / 2 = 1 grey row above, 2 below.
        for y in 0..5 {
            for x in 0..5 {
                let expected = match y {
                    1 | 2 => image.get_pixel(x, y - 1).0,
                    _ => [PAD_FILL; 3],
                };
                assert_eq!(square.get_pixel(x, y).0, expected, "({x}, {y})");
            }
        }
    }

    #[test]
    fn normalisation_maps_bytes_to_minus_one_one() {
        let lut = normalization_table();
        assert_eq!(lut[0], -1.0);
        assert_eq!(lut[255], 1.0);
        assert!(lut.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn jpeg_completeness_looks_after_the_last_scan() {
        assert!(jpeg_is_complete(&[
            0xFF, 0xD8, 0xFF, 0xDA, 1, 2, 0xFF, 0xD9
        ]));
        assert!(!jpeg_is_complete(&[
            0xFF, 0xD8, 0xFF, 0xD9, 0xFF, 0xDA, 1, 2
        ]));
        assert!(!jpeg_is_complete(&[0xFF, 0xD8, 0xFF, 0xDA, 1, 2]));
    }
}
