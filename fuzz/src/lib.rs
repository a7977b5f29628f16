//! What the fuzz targets share: the committed fixtures, and one input cut into the several
//! files a reader takes.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Separates the files packed into one fuzz input (the seed corpus is written the same way).
pub const SEPARATOR: &[u8] = b"\n--8<--\n";

/// `crates/imp/tests/fixtures`.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/imp/tests/fixtures")
}

/// A tiny fixture model folder (`imp-v1-3b`, `imp-v1.5-2b-qwen1.5`, ...).
pub fn model(name: &str) -> PathBuf {
    fixtures().join("models").join(name)
}

/// The fixture models of the three families, for targets that pick one per input.
pub const MODELS: [&str; 3] = ["imp-v1.5-3b-phi2", "imp-v1.5-2b-qwen1.5", "imp-v1.5-4b-phi3"];

/// `data` cut at [`SEPARATOR`] into exactly `n` parts (missing ones empty, extra ones kept in
/// the last).
pub fn parts(data: &[u8], n: usize) -> Vec<&[u8]> {
    let mut parts = Vec::with_capacity(n);
    let mut rest = data;
    while parts.len() + 1 < n {
        match rest.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
            Some(at) => {
                parts.push(&rest[..at]);
                rest = &rest[at + SEPARATOR.len()..];
            }
            None => break,
        }
    }
    parts.push(rest);
    parts.resize(n, &[]);
    parts
}

/// A folder of this process for the files one input is written to (rewritten each time).
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("a temporary folder"))
        .path()
}

/// Writes `bytes` to `name` in the scratch folder, or removes it when `bytes` is `None`.
pub fn put(name: &str, bytes: Option<&[u8]>) -> PathBuf {
    let path = scratch().join(name);
    match bytes {
        Some(bytes) => std::fs::write(&path, bytes).expect("writing the scratch folder"),
        None => {
            let _ = std::fs::remove_file(&path);
        }
    }
    path
}

/// For targets that reach a parser imp runs under `catch_unwind` (tokenizers, candle's GGUF
/// reader: they panic on some malformed input): libFuzzer's panic hook aborts before any
/// unwinding, so it is replaced by the default one. A panic nobody catches still aborts the
/// input, in libfuzzer-sys's own `catch_unwind`.
pub fn count_caught_panics_as_errors() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| drop(std::panic::take_hook()));
}
