//! The `imp` command's contract: its JSON output against the reference fixtures, and clear
//! errors with a non-zero exit for bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../imp/tests/fixtures")
}

fn model(name: &str) -> PathBuf {
    fixtures().join("models").join(name)
}

fn imp(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_imp"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("imp runs")
}

fn expected(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(model(name).join("expected.json")).unwrap())
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_fails_with(out: &Output, parts: &[&str]) {
    assert!(!out.status.success(), "expected failure, got success");
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(out));
    let err = stderr(out);
    assert!(!err.contains("panicked"), "panic: {err}");
    for part in parts {
        assert!(err.contains(part), "stderr `{err}` should mention `{part}`");
    }
}

#[test]
fn run_json_matches_the_reference() {
    for name in ["imp-v1.5-2b-qwen1.5", "imp-v1.5-4b-phi3"] {
        let e = expected(name);
        let dir = model(name);
        let image = dir.join(e["image"].as_str().unwrap());
        let out = imp(&[
            "run",
            "--model",
            dir.to_str().unwrap(),
            "--image",
            image.to_str().unwrap(),
            "--prompt",
            e["question"].as_str().unwrap(),
            "--max-new-tokens",
            "8",
            "--top-logprobs",
            "3",
            "--json",
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert_eq!(
            stdout.lines().count(),
            1,
            "exactly one JSON object: {stdout}"
        );
        let got: Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(got["tokens"], e["greedy_tokens"], "{name}");
        assert_eq!(got["text"], e["text"], "{name}");
        assert_eq!(got["prompt_tokens"], e["prompt_tokens"], "{name}");
        assert_eq!(got["image_tokens"], e["visual_tokens"], "{name}");
        let top = got["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 8);
        for (step, (ours, theirs)) in top
            .iter()
            .zip(e["top_logprobs"].as_array().unwrap())
            .enumerate()
        {
            let ours = ours.as_array().unwrap();
            assert_eq!(ours.len(), 3);
            for (o, t) in ours.iter().zip(theirs.as_array().unwrap()) {
                assert_eq!(o[0], t[0], "{name} step {step}");
                let d = (o[1].as_f64().unwrap() - t[1].as_f64().unwrap()).abs();
                assert!(d < 1e-4, "{name} step {step}: logprob off by {d}");
            }
        }
        for key in [
            "load_s",
            "preprocess_s",
            "vision_s",
            "projector_s",
            "prefill_s",
            "decode_s",
        ] {
            assert!(
                got["timings"][key].as_f64().unwrap() >= 0.0,
                "timings.{key}"
            );
        }
    }
}

#[test]
fn run_streams_text_to_stdout() {
    let name = "imp-v1.5-4b-phi3";
    let e = expected(name);
    let dir = model(name);
    let image = dir.join(e["image"].as_str().unwrap());
    let out = imp(&[
        "run",
        "--model",
        dir.to_str().unwrap(),
        "--image",
        image.to_str().unwrap(),
        "--prompt",
        e["question"].as_str().unwrap(),
        "--max-new-tokens",
        "8",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        e["text"].as_str().unwrap()
    );
}

#[test]
fn info_reports_what_was_detected() {
    let out = imp(&[
        "info",
        "--model",
        model("imp-v1.5-3b-196").to_str().unwrap(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["model_type"], "imp");
    assert!(info["naming_style"]
        .as_str()
        .unwrap()
        .starts_with("phi-msft"));
    assert_eq!(info["visual_tokens"], 9);
    assert_eq!(info["vision"]["image_size"], 42);
    assert_eq!(info["vision"]["layers"], 2);
    assert_eq!(
        info["vision"]["settings_from"],
        "siglip-so400m-patch14-196/config.json"
    );
    assert!(info["storage_dtype"][0]
        .as_str()
        .unwrap()
        .starts_with("f16"));
    assert_eq!(info["stop_token_ids"], serde_json::json!([50295]));

    let out = imp(&[
        "info",
        "--model",
        model("imp-v1.5-4b-phi3").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("Phi-3"), "{text}");
    assert!(text.contains("Pad"), "{text}");
}

#[test]
fn missing_model_folder() {
    let out = imp(&["info", "--model", "/no/such/model"]);
    assert_fails_with(&out, &["/no/such/model"]);
}

#[test]
fn uncached_repo_id_offline_names_the_fix() {
    let cache = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_imp"))
        .args(["info", "--model", "MILVLG/Imp-v1.5-3B-196"])
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_CACHE", cache.path())
        .output()
        .unwrap();
    assert_fails_with(
        &out,
        &[
            "MILVLG/Imp-v1.5-3B-196",
            "config.json",
            "huggingface-cli download",
        ],
    );
}

#[test]
fn image_that_is_not_an_image() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("photo.png");
    std::fs::write(&fake, b"definitely not a PNG").unwrap();
    let out = imp(&[
        "run",
        "--model",
        model("imp-v1-3b").to_str().unwrap(),
        "--image",
        fake.to_str().unwrap(),
        "--prompt",
        "What is this?",
    ]);
    assert_fails_with(&out, &["photo.png"]);
}

#[test]
fn missing_image_file() {
    let out = imp(&[
        "run",
        "--model",
        model("imp-v1-3b").to_str().unwrap(),
        "--image",
        "/no/such/photo.jpg",
        "--prompt",
        "What is this?",
    ]);
    assert_fails_with(&out, &["/no/such/photo.jpg"]);
}

#[test]
fn more_markers_than_images() {
    let image = fixtures().join("images/skimage_coffee.png");
    let out = imp(&[
        "run",
        "--model",
        model("imp-v1-3b").to_str().unwrap(),
        "--image",
        image.to_str().unwrap(),
        "--prompt",
        "USER: <image>\n<image>\nCompare them. ASSISTANT:",
    ]);
    assert_fails_with(&out, &["2 `<image>` marker(s)"]);
}

#[test]
fn invalid_sampling_parameters() {
    let image = fixtures().join("images/skimage_coffee.png");
    let out = imp(&[
        "run",
        "--model",
        model("imp-v1-3b").to_str().unwrap(),
        "--image",
        image.to_str().unwrap(),
        "--prompt",
        "Hi",
        "--top-p",
        "1.5",
    ]);
    assert_fails_with(&out, &["top_p"]);
}

#[test]
fn bench_measures_every_stage() {
    let dir = model("imp-v1.5-3b-phi2");
    let dir = dir.to_str().unwrap();
    let out = imp(&[
        "bench",
        "--model",
        dir,
        "--quant",
        "q8_0",
        "--threads",
        "2",
        "--prompt-tokens",
        "60",
        "--gen-tokens",
        "3",
        "--repeat",
        "1",
        "--json",
    ]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "load_s",
        "preprocess_s",
        "vision_s",
        "projector_s",
        "prefill_s",
        "ttft_s",
        "decode_tok_s",
        "short_context_decode_tok_s",
        "bandwidth_gb_s",
    ] {
        let value = report[key].as_f64().unwrap_or(f64::NAN);
        assert!(value > 0.0 && value.is_finite(), "{key} = {value}");
    }
    assert_eq!(report["threads"], 2);
    assert_eq!(report["quant"], "q8_0");
    // The prompt's text (the marker included) is 60 tokens; the marker becomes the image rows.
    let image_tokens = report["image_tokens"].as_u64().unwrap();
    assert_eq!(image_tokens, 16);
    assert_eq!(
        report["prefill_tokens"].as_u64().unwrap(),
        60 - 1 + image_tokens
    );

    let info = imp(&["info", "--model", dir, "--quant", "q8_0", "--json"]);
    let info: Value = serde_json::from_slice(&info.stdout).unwrap();
    let decode_bytes: u64 = info["weights"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["part"] == "llm" && g["width"] != 0 && g["name"] != "model.embed_tokens")
        .map(|g| g["bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(
        report["weight_bytes_per_token"].as_u64(),
        Some(decode_bytes)
    );
}

#[test]
fn bench_rejects_bad_arguments() {
    let out = imp(&["bench", "--synthetic", "imp-v9", "--json"]);
    assert_fails_with(&out, &["unknown preset `imp-v9`", "imp-v1.5-3b"]);
    let out = imp(&["bench", "--synthetic", "imp-v1.5-2b", "--threads", "0"]);
    assert_fails_with(&out, &["--threads"]);
}
