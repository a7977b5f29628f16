//! `imp quantize`, `imp quant-report` and the `--quant` options, end to end through the binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../imp/tests/fixtures")
}

fn imp(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_imp"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("imp runs")
}

fn json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn quantized_file_answers_like_quantizing_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixtures().join("models/imp-v1.5-2b-qwen1.5");
    let model = model.to_str().unwrap();
    let file = dir.path().join("qwen.gguf");
    let file = file.to_str().unwrap();
    let plan = ["--quant", "q4_k", "--llm-quant", "q8_0"];
    let out = imp(&[&["quantize", "--model", model, "--out", file], &plan[..]].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let image = fixtures().join("images/skimage_coffee.png");
    let ask = [
        "--image",
        image.to_str().unwrap(),
        "--prompt",
        "What is this?",
        "--max-new-tokens",
        "6",
        "--top-logprobs",
        "3",
        "--json",
    ];
    let in_situ = json(&imp(
        &[&["run", "--model", model], &plan[..], &ask[..]].concat()
    ));
    let from_file = json(&imp(&[&["run", "--model", file], &ask[..]].concat()));
    for key in ["text", "tokens", "top_logprobs"] {
        assert_eq!(in_situ[key], from_file[key], "{key}");
    }

    let info = json(&imp(&["info", "--model", file, "--json"]));
    let weights = info["weights"].as_array().unwrap();
    for group in weights.iter().filter(|g| g["width"] != 0) {
        let expected = if group["part"] == "llm" {
            "q8_0"
        } else {
            "q4_k"
        };
        assert_eq!(group["format"], expected, "{group}");
    }
}

#[test]
fn quant_report_compares_three_variants() {
    let model = fixtures().join("models/imp-v1-3b");
    let image = fixtures().join("images/skimage_chelsea.png");
    let report = json(&imp(&[
        "quant-report",
        "--model",
        model.to_str().unwrap(),
        "--quant",
        "q4_0",
        "--image",
        image.to_str().unwrap(),
        "--question",
        "What is shown in this image?",
        "--max-new-tokens",
        "4",
        "--json",
    ]));
    assert_eq!(report["samples"], 1);
    let variants: Vec<&str> = report["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["variant"].as_str().unwrap())
        .collect();
    assert_eq!(variants, ["all", "vision only", "llm only"]);
}

#[test]
fn unknown_format_fails_listing_the_valid_ones() {
    let model = fixtures().join("models/imp-v1-3b");
    let out = imp(&[
        "info",
        "--model",
        model.to_str().unwrap(),
        "--vision-quant",
        "q3",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for part in ["`q3`", "f16", "q8_0", "q4_k"] {
        assert!(err.contains(part), "`{err}` should mention {part}");
    }
}
