//! `imp train` end to end: a LoRA trained on one image question answers it through
//! `imp run --lora` and after `imp train merge`; `--dry-run` sizes the run without training;
//! a run folder that holds another run is refused.

use std::path::Path;

use crate::support::{arg, image, imp, model, stderr};

const MODEL: &str = "imp-v1.5-3b-phi2";
const QUESTION: &str = "What is in the cup?";
const ANSWER: &str = "Coffee with milk foam.";

fn write_data(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("data.json");
    let data = serde_json::json!([{
        "id": "coffee",
        "image": "skimage_coffee.png",
        "conversations": [
            {"from": "human", "value": format!("<image>\n{QUESTION}")},
            {"from": "gpt", "value": ANSWER},
        ],
    }]);
    std::fs::write(&path, data.to_string()).unwrap();
    path
}

fn ask(model_dir: &Path, extra: &[&str]) -> String {
    let picture = image("skimage_coffee.png");
    let mut args = vec![
        "run",
        "--model",
        arg(model_dir),
        "--image",
        arg(&picture),
        "--prompt",
        QUESTION,
        "--max-new-tokens",
        "12",
    ];
    args.extend(extra);
    let out = imp(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn train_then_run_with_lora_and_merged() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_data(dir.path());
    let base = model(MODEL);
    let images = image("");
    let run_dir = dir.path().join("run");
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "--model",
            arg(&base),
            "--data",
            arg(&data),
            "--image-folder",
            arg(&images),
            "--out",
            arg(&run_dir),
        ];
        args.extend(extra);
        imp(&args)
    };

    let dry = train(&["--dry-run"]);
    assert!(dry.status.success(), "{}", stderr(&dry));
    let report = String::from_utf8(dry.stdout).unwrap();
    assert!(report.contains("1 samples (1 with an image)"), "{report}");
    assert!(report.contains("| 2048 |"), "{report}");
    assert!(!run_dir.exists(), "a dry run writes nothing");

    let out = train(&[
        "--lora-r",
        "8",
        "--lora-alpha",
        "16",
        "--lr",
        "1e-2",
        "--projector-lr",
        "1e-3",
        "--epochs",
        "40",
        "--micro-batch",
        "1",
        "--global-batch",
        "1",
        "--scheduler",
        "constant",
        "--warmup-ratio",
        "0",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    for file in ["log.jsonl", "loss.svg", "adapter/adapter_config.json"] {
        assert!(run_dir.join(file).is_file(), "{file} missing");
    }
    assert_ne!(ask(&base, &[]), ANSWER);
    let adapter = run_dir.join("adapter");
    assert_eq!(ask(&base, &["--lora", arg(&adapter)]), ANSWER);

    let merged = dir.path().join("merged");
    let out = imp(&[
        "train",
        "merge",
        "--model",
        arg(&base),
        "--adapter",
        arg(&adapter),
        "--out",
        arg(&merged),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(ask(&merged, &[]), ANSWER);

    // The run folder now holds a run: starting another there is refused.
    let again = train(&[]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already holds files"),
        "{}",
        stderr(&again)
    );
}
