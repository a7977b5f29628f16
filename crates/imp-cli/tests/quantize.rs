//! `imp quantize`, `imp quant-report` and the `--quant` options, end to end through the binary.

use crate::support::{arg, image, imp, json, model, stderr};

#[test]
fn quantized_file_answers_like_quantizing_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let model = model("imp-v1.5-2b-qwen1.5");
    let model = arg(&model);
    let file = dir.path().join("qwen.gguf");
    let file = arg(&file);
    let plan = ["--quant", "q4_k", "--llm-quant", "q8_0"];
    let out = imp(&[&["quantize", "--model", model, "--out", file], &plan[..]].concat());
    assert!(out.status.success(), "{}", stderr(&out));

    let image = image("skimage_coffee.png");
    let ask = [
        "--image",
        arg(&image),
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
fn quant_report_compares_the_plan_its_parts_and_the_cache() {
    let model = model("imp-v1-3b");
    let chelsea = image("skimage_chelsea.png");
    // Without --image the report asks about the nine photos built into `imp`.
    let images: [(&[&str], usize); 2] = [(&["--image", arg(&chelsea)], 1), (&[], 9)];
    for (image_args, samples) in images {
        let args = [
            "quant-report",
            "--model",
            arg(&model),
            "--quant",
            "q4_0",
            "--question",
            "What is shown in this image?",
            "--max-new-tokens",
            "4",
            "--json",
        ];
        let report = json(&imp(&[&args[..], image_args].concat()));
        assert_eq!(report["samples"], samples);
        let variants: Vec<&str> = report["variants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["variant"].as_str().unwrap())
            .collect();
        // The default f16 KV cache is measured too.
        assert_eq!(
            variants,
            ["all", "vision only", "llm only", "kv cache only"]
        );
    }
}
