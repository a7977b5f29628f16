//! `imp::preprocess` against Pillow 13: the expected outputs in `tests/fixtures/preprocess` were
//! written by `scripts/fixtures/gen_preprocess.py` (see the README there).

use std::path::Path;

use candle_core::Device;
use image::RgbImage;
use imp::config::AspectMode;
use imp::preprocess::{decode_rgb, load_rgb, pil_bicubic_resize, ImagePreprocessor, MAX_SIDE};
use imp::Error;
use serde::Deserialize;

use crate::support::{fixture, read_json};

/// Measured on the fixtures (see the module docs of `imp::preprocess`): zune-jpeg's pixels differ
/// from libjpeg-turbo's by at most 4 per channel value (4:2:0 chroma upsampling), before and after
/// the resize.
const JPEG_MAX_ABS: u8 = 4;
/// Measured: mean abs difference after the resize at most 0.31 (pillow_hopper.jpg).
const JPEG_MEAN_ABS: f64 = 0.35;

#[derive(Deserialize)]
struct Manifest {
    cases: Vec<Case>,
    resizes: Vec<Resize>,
    normalized: Normalized,
}

#[derive(Deserialize)]
struct Case {
    input: String,
    size: usize,
    aspect: String,
    expected: String,
    pil_decoded: Option<String>,
}

#[derive(Deserialize)]
struct Resize {
    input: String,
    width: u32,
    height: u32,
    expected: String,
}

#[derive(Deserialize)]
struct Normalized {
    input: String,
    size: usize,
    aspect: String,
    expected: String,
}

fn manifest() -> Manifest {
    read_json(&fixture("preprocess/cases.json"))
}

/// A fixture PNG written by Pillow from a uint8 RGB array, read with the image crate's PNG decoder
/// (lossless, so independent of the code under test).
fn png_rgb(relative: &str) -> RgbImage {
    image::open(fixture(relative)).unwrap().into_rgb8()
}

fn preprocessor(case: &Case) -> ImagePreprocessor {
    ImagePreprocessor::new(case.size, AspectMode::from_config(&case.aspect).unwrap())
}

fn label(case: &Case) -> String {
    format!("{} {}{}", case.input, case.aspect, case.size)
}

/// Count of differing values and the first differing pixel, or None when identical.
fn mismatch(ours: &RgbImage, expected: &RgbImage) -> Option<String> {
    if ours.dimensions() != expected.dimensions() {
        return Some(format!(
            "size {:?} vs {:?}",
            ours.dimensions(),
            expected.dimensions()
        ));
    }
    let diffs = ours
        .iter()
        .zip(expected.iter())
        .filter(|(a, b)| a != b)
        .count();
    let (x, y, a, b) = ours
        .enumerate_pixels()
        .zip(expected.pixels())
        .map(|((x, y, a), b)| (x, y, a.0, b.0))
        .find(|(_, _, a, b)| a != b)?;
    Some(format!(
        "{diffs} values differ, first at ({x}, {y}): {a:?} vs Pillow {b:?}"
    ))
}

fn assert_all_match(what: &str, failures: Vec<String>, checked: usize) {
    assert!(checked > 0, "{what}: no cases checked");
    assert!(
        failures.is_empty(),
        "{what}: {} of {checked} differ from Pillow:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn is_jpeg(case: &Case) -> bool {
    case.pil_decoded.is_some()
}

/// How a case's input is decoded before the resize.
type Decode = fn(&Case) -> RgbImage;

/// (inputs, whether they are JPEGs, the decoding whose resize must equal Pillow's exactly): ours
/// for lossless formats, Pillow's own for JPEG, whose decoders differ (bounded further down).
const EXACT_RESIZES: [(&str, bool, Decode); 2] = [
    ("non-JPEG inputs", false, |case| {
        load_rgb(&fixture(&case.input)).unwrap()
    }),
    ("JPEG inputs decoded by Pillow", true, |case| {
        png_rgb(case.pil_decoded.as_deref().unwrap())
    }),
];

#[test]
fn square_resizes_match_pillow_exactly() {
    for (what, jpeg, decode) in EXACT_RESIZES {
        let cases: Vec<Case> = manifest()
            .cases
            .into_iter()
            .filter(|c| is_jpeg(c) == jpeg)
            .collect();
        let failures = cases
            .iter()
            .filter_map(|case| {
                let ours = preprocessor(case).resize(&decode(case));
                mismatch(&ours, &png_rgb(&case.expected)).map(|m| format!("{}: {m}", label(case)))
            })
            .collect();
        assert_all_match(what, failures, cases.len());
    }
}

#[test]
fn non_square_resizes_match_pillow_exactly() {
    let resizes = manifest().resizes;
    let failures = resizes
        .iter()
        .filter_map(|r| {
            let ours =
                pil_bicubic_resize(&load_rgb(&fixture(&r.input)).unwrap(), r.width, r.height);
            mismatch(&ours, &png_rgb(&r.expected))
                .map(|m| format!("{} -> {}x{}: {m}", r.input, r.width, r.height))
        })
        .collect();
    assert_all_match("non-square resizes", failures, resizes.len());
}

/// Max and mean absolute difference over all channel values.
fn difference(ours: &RgbImage, reference: &RgbImage) -> (u8, f64) {
    assert_eq!(ours.dimensions(), reference.dimensions());
    let (max, sum) = ours
        .iter()
        .zip(reference.iter())
        .fold((0u8, 0u64), |(max, sum), (&a, &b)| {
            let d = a.abs_diff(b);
            (max.max(d), sum + u64::from(d))
        });
    (max, sum as f64 / ours.len() as f64)
}

#[test]
fn jpeg_decoder_difference_is_within_the_measured_bound() {
    let cases: Vec<Case> = manifest().cases.into_iter().filter(is_jpeg).collect();
    assert!(!cases.is_empty());
    let mut report = Vec::new();
    for case in &cases {
        let ours_decoded = load_rgb(&fixture(&case.input)).unwrap();
        let (decode_max, decode_mean) = difference(
            &ours_decoded,
            &png_rgb(case.pil_decoded.as_deref().unwrap()),
        );
        let (max, mean) = difference(
            &preprocessor(case).resize(&ours_decoded),
            &png_rgb(&case.expected),
        );
        report.push(format!(
            "{}: decoded max {decode_max} mean {decode_mean:.4}; resized max {max} mean {mean:.4}",
            label(case)
        ));
        assert!(
            decode_max <= JPEG_MAX_ABS && max <= JPEG_MAX_ABS && mean <= JPEG_MEAN_ABS,
            "{}",
            report.join("\n")
        );
    }
    println!("{}", report.join("\n"));
}

#[test]
fn normalized_tensor_matches_transformers() {
    let n = manifest().normalized;
    let bytes = std::fs::read(fixture(&n.expected)).unwrap();
    let expected: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let pre = ImagePreprocessor::new(n.size, AspectMode::from_config(&n.aspect).unwrap());
    let tensor = pre
        .preprocess(&load_rgb(&fixture(&n.input)).unwrap(), &Device::Cpu)
        .unwrap();
    assert_eq!(tensor.dims(), &[1, 3, n.size, n.size]);
    assert_eq!(tensor.dtype(), candle_core::DType::F32);
    let ours = tensor.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(ours.len(), expected.len());
    let worst = ours
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst <= 1e-6, "max abs difference {worst}");
}

// --- bad inputs -------------------------------------------------------------------------------

fn crc32(bytes: &[u8]) -> u32 {
    !bytes.iter().fold(!0u32, |crc, &b| {
        (0..8).fold(crc ^ u32::from(b), |c, _| {
            (c >> 1) ^ (0xEDB8_8320 & (c & 1).wrapping_neg())
        })
    })
}

fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut chunk = (data.len() as u32).to_be_bytes().to_vec();
    chunk.extend_from_slice(kind);
    chunk.extend_from_slice(data);
    chunk.extend_from_slice(&crc32(&chunk[4..]).to_be_bytes());
    chunk
}

/// A well-formed PNG header (8-bit RGB) claiming `width`×`height`, followed by a tiny IDAT.
fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(png_chunk(b"IHDR", &ihdr));
    // An empty stored deflate block: valid zlib, far too little data for the claimed size.
    png.extend(png_chunk(
        b"IDAT",
        &[
            0x78, 0x01, 0x01, 0x00, 0x00, 0xFF, 0xFF, 0x00, 0x00, 0x00, 0x01,
        ],
    ));
    png.extend(png_chunk(b"IEND", &[]));
    png
}

fn image_error(result: imp::Result<RgbImage>) -> String {
    match result {
        Err(e @ Error::Image { .. }) => e.to_string(),
        Err(e) => panic!("expected an image error, got {e:?}"),
        Ok(image) => panic!("expected an error, decoded {:?}", image.dimensions()),
    }
}

#[test]
fn crc_of_a_real_png_chunk() {
    // The IHDR of every fixture PNG carries a CRC that our test helper must reproduce.
    let bytes = std::fs::read(fixture("images/skimage_coins.png")).unwrap();
    let stored = u32::from_be_bytes(bytes[29..33].try_into().unwrap());
    assert_eq!(crc32(&bytes[12..29]), stored);
}

#[test]
fn random_bytes_are_not_an_image() {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let bytes: Vec<u8> = (0..4096)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let message = image_error(decode_rgb(&bytes, "noise.bin"));
    assert!(
        message.contains("noise.bin") && message.contains("not an image"),
        "{message}"
    );
    let message = image_error(decode_rgb(b"", "empty.png"));
    assert!(message.contains("not an image"), "{message}");
}

/// Where a file is cut.
#[derive(Clone, Copy, Debug)]
enum Cut {
    Half,
    DropLast(usize),
    KeepFirst(usize),
}

/// (fixture, name in the message, cuts that must each give a "truncated" error)
const TRUNCATIONS: [(&str, &str, [Cut; 3]); 2] = [
    (
        "images/skimage_chelsea.png",
        "chelsea.png",
        [Cut::Half, Cut::DropLast(100), Cut::KeepFirst(40)],
    ),
    // Pillow rejects even a JPEG that only lacks its 2-byte end marker.
    (
        "images/pillow_hopper.jpg",
        "hopper.jpg",
        [Cut::DropLast(2), Cut::Half, Cut::KeepFirst(300)],
    ),
];

#[test]
fn truncated_files_are_an_error() {
    for (file, name, cuts) in TRUNCATIONS {
        let bytes = std::fs::read(fixture(file)).unwrap();
        decode_rgb(&bytes, name).unwrap_or_else(|e| panic!("{file} whole: {e}"));
        for cut in cuts {
            let len = match cut {
                Cut::Half => bytes.len() / 2,
                Cut::DropLast(n) => bytes.len() - n,
                Cut::KeepFirst(n) => n,
            };
            let message = image_error(decode_rgb(&bytes[..len], name));
            assert!(
                message.contains("truncated"),
                "{file} {cut:?} ({len} bytes): {message}"
            );
        }
    }
}

#[test]
fn png_without_its_end_chunk_decodes_like_pillow() {
    // Pillow reads such a file without complaint; the pixels are all there.
    let bytes = std::fs::read(fixture("images/skimage_coins.png")).unwrap();
    assert!(bytes.ends_with(b"IEND\xAE\x42\x60\x82"));
    let full = decode_rgb(&bytes, "coins.png").unwrap();
    assert_eq!(
        decode_rgb(&bytes[..bytes.len() - 12], "coins.png").unwrap(),
        full
    );
}

#[test]
fn empty_image_is_an_error() {
    // The png crate rejects a zero side in the header already.
    for (w, h) in [(0, 0), (0, 5), (5, 0)] {
        let message = image_error(decode_rgb(&png_claiming(w, h), "empty.png"));
        assert!(
            message.contains("empty.png") && message.contains("dimensions"),
            "{message}"
        );
    }
    // GIF allows a 0×0 screen: header, no colour table, one 0×0 frame, trailer.
    let gif = b"GIF89a\0\0\0\0\0\0\0\x2c\0\0\0\0\0\0\0\0\0\x02\x02\x4c\x01\0\x3b";
    let message = image_error(decode_rgb(gif, "empty.gif"));
    assert!(message.contains("empty image (0×0 pixels)"), "{message}");
}

#[test]
fn huge_image_is_refused_before_decoding() {
    let message = image_error(decode_rgb(&png_claiming(30_000, 30_000), "huge.png"));
    assert!(
        message.contains("30000×30000") && message.contains("too large"),
        "{message}"
    );
    let message = image_error(decode_rgb(&png_claiming(MAX_SIDE + 1, 1), "wide.png"));
    assert!(message.contains("too large"), "{message}");
    // Within the per-side limit but over the pixel budget.
    let message = image_error(decode_rgb(&png_claiming(MAX_SIDE, MAX_SIDE), "square.png"));
    assert!(message.contains("too large"), "{message}");
    // The same header at a sane size gets past the limits and fails only for lack of data.
    let message = image_error(decode_rgb(&png_claiming(300, 300), "small.png"));
    assert!(!message.contains("too large"), "{message}");
}

#[test]
fn missing_file_is_an_io_error_naming_the_path() {
    let path = Path::new("/nonexistent/dir/picture.png");
    match load_rgb(path) {
        Err(e @ Error::Io { .. }) => assert!(e.to_string().contains("picture.png"), "{e}"),
        other => panic!(
            "expected Error::Io, got {:?}",
            other.map(|i| i.dimensions())
        ),
    }
}

#[test]
fn any_output_size_works() {
    let image = load_rgb(&fixture("images/skimage_coffee.png")).unwrap();
    for size in [1, 2, 42, 56, 70, 601] {
        for aspect in [AspectMode::Squash, AspectMode::Pad] {
            let pre = ImagePreprocessor::new(size, aspect);
            assert_eq!(pre.resize(&image).dimensions(), (size as u32, size as u32));
            let tensor = pre.preprocess(&image, &Device::Cpu).unwrap();
            assert_eq!(tensor.dims(), &[1, 3, size, size]);
        }
    }
}
