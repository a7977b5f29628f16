//! Files built into `imp` so that an installed binary never reads the source tree: each decoder
//! family's tokenizer, which synthetic models borrow, and the photos `imp quant-report` asks about
//! by default (7.6 MB in all).
//!
//! Each tokenizer is embedded in its most compact layout (6.2 MB for the three): Phi-2 as
//! `vocab.json` + `merges.txt` (its `tokenizer.json` alone is 3.5 MB), Phi-3 as its SentencePiece
//! `tokenizer.model`; `imp::tokenizer` rebuilds the same tokenizer from either layout.

use anyhow::{Context, Result};
use image::RgbImage;
use imp::config::Family;
use tempfile::TempDir;

/// A file of a fixture folder: its name and contents.
type File = (&'static str, &'static [u8]);

/// `fixture_files!("folder": "name", ..)`: files of the test fixtures, embedded at build time.
macro_rules! fixture_files {
    ($folder:literal: $($name:literal),+ $(,)?) => {
        &[$((
            $name,
            include_bytes!(concat!("../../imp/tests/fixtures/", $folder, "/", $name)),
        )),+]
    };
}

const PHI2_TOKENIZER: &[File] = fixture_files!(
    "models/imp-v1-3b-msft": "vocab.json", "merges.txt", "added_tokens.json",
    "tokenizer_config.json", "special_tokens_map.json",
);
const QWEN2_TOKENIZER: &[File] = fixture_files!(
    "models/imp-v1.5-2b-qwen1.5": "vocab.json", "merges.txt", "added_tokens.json",
    "tokenizer_config.json", "special_tokens_map.json",
);
const PHI3_TOKENIZER: &[File] = fixture_files!(
    "models/imp-v1.5-4b-phi3": "tokenizer.model", "added_tokens.json", "tokenizer_config.json",
    "special_tokens_map.json",
);

/// In file-name order, as `imp quant-report` has always taken them.
const PHOTOS: &[File] = fixture_files!(
    "images": "matplotlib_Minduka_Present_Blue_Pack.png", "matplotlib_grace_hopper.jpg",
    "pillow_hopper.jpg", "skimage_camera.png", "skimage_chelsea.png", "skimage_coffee.png",
    "skimage_coins.png", "skimage_retina.jpg", "skimage_rocket.jpg",
);

/// `family`'s tokenizer files in a fresh temporary folder (removed when dropped):
/// `imp_tools::synthetic` takes its tokenizer as a folder.
pub fn tokenizer_folder(family: Family) -> Result<TempDir> {
    let files = match family {
        Family::Phi2 => PHI2_TOKENIZER,
        Family::Qwen2 => QWEN2_TOKENIZER,
        Family::Phi3 => PHI3_TOKENIZER,
    };
    let dir = tempfile::Builder::new()
        .prefix("imp-tokenizer-")
        .tempdir()
        .context("creating a temporary folder for the built-in tokenizer")?;
    for (name, bytes) in files {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(dir)
}

/// The built-in photos, decoded.
pub fn photos() -> Result<Vec<RgbImage>> {
    PHOTOS
        .iter()
        .map(|(name, bytes)| Ok(imp::preprocess::decode_rgb(bytes, name)?))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use imp::tokenizer::ImpTokenizer;

    use super::*;

    const TEXTS: [&str; 3] = [
        "What is shown in this image?",
        "  Ünïcödé, digits 12345 and\n\nnew lines\t<image>",
        "<|endoftext|></s><|im_end|><|end|>",
    ];

    /// The built-in tokenizer is the one of the family's fixture model, whose files it replaces.
    #[test]
    fn built_in_tokenizers_equal_the_fixture_models() {
        let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../imp/tests/fixtures/models");
        for (family, model) in [
            (Family::Phi2, "imp-v1.5-3b-phi2"),
            (Family::Qwen2, "imp-v1.5-2b-qwen1.5"),
            (Family::Phi3, "imp-v1.5-4b-phi3"),
        ] {
            let folder = tokenizer_folder(family).unwrap();
            let built_in = ImpTokenizer::from_dir(folder.path()).unwrap();
            let fixture = ImpTokenizer::from_dir(&models.join(model)).unwrap();
            assert_eq!(built_in.vocab_size(), fixture.vocab_size(), "{model}");
            for text in TEXTS {
                let ids = fixture.encode(text).unwrap();
                assert_eq!(built_in.encode(text).unwrap(), ids, "{model}: {text:?}");
                assert_eq!(
                    built_in.decode(&ids, false).unwrap(),
                    fixture.decode(&ids, false).unwrap(),
                    "{model}: {text:?}"
                );
            }
        }
    }

    #[test]
    fn built_in_photos_are_the_fixture_images() {
        let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("../imp/tests/fixtures/images");
        let mut names: Vec<String> = std::fs::read_dir(&folder)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.ends_with(".png") || name.ends_with(".jpg"))
            .collect();
        names.sort();
        let built_in: Vec<&str> = PHOTOS.iter().map(|(name, _)| *name).collect();
        assert_eq!(built_in, names);
        assert_eq!(photos().unwrap().len(), names.len());
    }
}
