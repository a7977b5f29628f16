//! Shared by the topics: fixture paths and the `imp` binary as a subprocess.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../imp/tests/fixtures")
}

pub fn model(name: &str) -> PathBuf {
    fixtures().join("models").join(name)
}

pub fn image(name: &str) -> PathBuf {
    fixtures().join("images").join(name)
}

/// A path as a command-line argument (the fixtures' paths are UTF-8).
pub fn arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The stage timings, in seconds, that both `run --json` and `bench --json` report.
pub const STAGE_SECONDS: [&str; 5] = [
    "load_s",
    "preprocess_s",
    "vision_s",
    "projector_s",
    "prefill_s",
];

/// `imp ARGS`, offline.
pub fn imp(args: &[&str]) -> Output {
    imp_with_env(args, &[])
}

/// `imp ARGS`, offline, with these extra environment variables.
pub fn imp_with_env(args: &[&str], env: &[(&str, &Path)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_imp"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .envs(env.iter().copied())
        .output()
        .expect("imp runs")
}

/// The `expected.json` that transformers wrote for a fixture model.
pub fn expected(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(model(name).join("expected.json")).unwrap())
        .unwrap()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The one JSON object a successful `--json` command printed.
pub fn json(out: &Output) -> Value {
    assert!(out.status.success(), "stderr: {}", stderr(out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Exit status 1, no panic, and a message that mentions every one of `parts`.
pub fn assert_fails_with(out: &Output, parts: &[&str]) {
    assert!(
        !out.status.success(),
        "expected a failure mentioning {parts:?}, got success"
    );
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(out));
    let err = stderr(out);
    assert!(!err.contains("panicked"), "panic: {err}");
    for part in parts {
        assert!(err.contains(part), "stderr `{err}` should mention `{part}`");
    }
}
