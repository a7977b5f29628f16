//! `imp run`: its answers against transformers' (`expected.json`), as JSON and as streamed text.

use std::process::Output;

use serde_json::Value;

use crate::support::{arg, expected, imp, model, stderr, STAGE_SECONDS};

/// `imp run` asking a fixture model the question of its `expected.json` for 8 tokens, plus `extra`.
fn ask(name: &str, extra: &[&str]) -> Output {
    let e = expected(name);
    let dir = model(name);
    let image = dir.join(e["image"].as_str().unwrap());
    let question = e["question"].as_str().unwrap();
    let args = [
        "run",
        "--model",
        arg(&dir),
        "--image",
        arg(&image),
        "--prompt",
        question,
        "--max-new-tokens",
        "8",
    ];
    imp(&[&args[..], extra].concat())
}

#[test]
fn run_json_matches_the_reference() {
    for name in ["imp-v1.5-2b-qwen1.5", "imp-v1.5-4b-phi3"] {
        let e = expected(name);
        // The reference keeps its keys and values in f32.
        let out = ask(
            name,
            &["--top-logprobs", "3", "--json", "--kv-cache", "f32"],
        );
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
        for key in STAGE_SECONDS.into_iter().chain(["decode_s"]) {
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
    let out = ask(name, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        expected(name)["text"].as_str().unwrap()
    );
}
