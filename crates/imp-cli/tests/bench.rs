//! `imp bench`: every stage timed, and the weight bytes per token equal to what `imp info` lists.

use serde_json::Value;

use crate::support::{arg, imp, model, stderr, STAGE_SECONDS};

#[test]
fn bench_measures_every_stage() {
    let dir = model("imp-v1.5-3b-phi2");
    let dir = arg(&dir);
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
    let measures = [
        "ttft_s",
        "decode_tok_s",
        "short_context_decode_tok_s",
        "bandwidth_gb_s",
    ];
    for key in STAGE_SECONDS.into_iter().chain(measures) {
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
