//! `imp bench`: every stage timed, the weight bytes per token and in memory equal to what
//! `imp info` lists, the weight files' size, and the CPU and kernel paths it ran on.

use std::path::Path;

use serde_json::Value;

use crate::support::{arg, imp, json, model, stderr, STAGE_SECONDS};

/// The names `imp info` and `IMP_EXPECT_ISA` give the instruction-set paths.
const ISA_NAMES: [&str; 6] = [
    "Scalar",
    "Avx2",
    "Avx512",
    "Avx512Vnni",
    "Neon",
    "NeonDotprod",
];

/// The machine's fields: a CPU name (never empty, "unknown" at worst) and a known path for
/// each kernel family.
fn assert_machine_fields(report: &Value) {
    let cpu = report["cpu"].as_str().unwrap();
    assert!(!cpu.trim().is_empty(), "cpu = {cpu:?}");
    for family in ["block_matmul", "fused"] {
        let path = report["isa"][family].as_str().unwrap();
        assert!(ISA_NAMES.contains(&path), "isa.{family} = {path}");
    }
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

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
    let memory_bytes: u64 = info["weights"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(report["weight_memory_bytes"].as_u64(), Some(memory_bytes));
    // The default cache: f16 keys and values of every layer.
    assert_eq!(report["kv_cache"], "f16");
    let llm = |key: &str| info["llm"][key].as_u64().unwrap();
    assert_eq!(
        report["kv_cache_bytes_per_token"].as_u64(),
        Some(2 * llm("layers") * llm("kv_heads") * llm("head_dim") * 2),
    );

    assert_machine_fields(&report);
    // The three shards the index names; the fixture's expected.safetensors is no weight file.
    let shards: u64 = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_str().unwrap();
            name.starts_with("model-") && name.ends_with(".safetensors")
        })
        .map(|p| file_size(&p))
        .sum();
    assert!(shards > 0);
    assert_eq!(report["weight_file_bytes"].as_u64(), Some(shards));
}

#[test]
fn bench_reports_the_gguf_file_size() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("phi2-q4_k.gguf");
    let source = model("imp-v1.5-3b-phi2");
    let out = imp(&[
        "quantize",
        "--model",
        arg(&source),
        "--quant",
        "q4_k",
        "--out",
        arg(&file),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = json(&imp(&[
        "bench",
        "--model",
        arg(&file),
        "--threads",
        "2",
        "--no-image",
        "--prompt-tokens",
        "8",
        "--gen-tokens",
        "2",
        "--repeat",
        "1",
        "--json",
    ]));
    assert_eq!(report["quant"], "q4_k");
    assert_eq!(report["weight_file_bytes"].as_u64(), Some(file_size(&file)));
    assert!(report["weight_memory_bytes"].as_u64().unwrap() > 0);
    assert_machine_fields(&report);
}
