use std::path::PathBuf;

use engine::{Conversation, GenerationOptions, ImpModel, LoadOptions};
use serde_json::Value;

use crate::support::{compile, model_dir, repo, run};

/// Every fixture model, each with transformers' greedy answer in its `expected.json`.
const MODELS: &[&str] = &[
    "imp-v1-3b",
    "imp-v1-3b-msft",
    "imp-v1.5-2b-qwen1.5",
    "imp-v1.5-3b-196",
    "imp-v1.5-3b-phi2",
    "imp-v1.5-4b-phi3",
];

const FOLLOW_UP: &str = "What else is in it?";

struct Case {
    dir: PathBuf,
    image: PathBuf,
    question: String,
    /// params_json for as many tokens as transformers generated.
    params: String,
    max_new_tokens: usize,
    text: String,
}

fn case(name: &str) -> Case {
    let dir = model_dir(name);
    let expected: Value =
        serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
    let max_new_tokens = expected["greedy_tokens"].as_array().unwrap().len();
    Case {
        image: dir.join(expected["image"].as_str().unwrap()),
        question: expected["question"].as_str().unwrap().to_owned(),
        params: format!("{{\"max_new_tokens\": {max_new_tokens}}}"),
        max_new_tokens,
        text: expected["text"].as_str().unwrap().to_owned(),
        dir,
    }
}

fn utf8(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap()
}

/// The example of the README: its streamed answer is transformers' on every family.
#[test]
fn ask_example_streams_the_reference_answer() {
    let ask = compile("ask", &[repo().join("examples/c/ask.c")]);
    for name in MODELS {
        let case = case(name);
        let output = run(
            &ask,
            &[
                case.dir.to_str().unwrap(),
                case.image.to_str().unwrap(),
                &case.question,
                &case.params,
            ],
        );
        assert!(output.status.success(), "{name}: {}", utf8(&output.stderr));
        assert_eq!(utf8(&output.stdout), format!("{}\n", case.text), "{name}");
    }
    let output = run(&ask, &["/nonexistent/model", "x.png", "?"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        utf8(&output.stderr).contains("/nonexistent/model"),
        "{}",
        utf8(&output.stderr)
    );
}

/// tests/c/api.c on every family: errors, pixels from memory, the stop callback, a follow-up
/// turn, two threads, a session outliving its model.
#[test]
fn c_api_on_every_family() {
    let api = compile("api", &[repo().join("crates/imp-capi/tests/c/api.c")]);
    for name in MODELS {
        let case = case(name);
        let image = engine::load_rgb(&case.image).unwrap();
        let (width, height) = image.dimensions();
        // Rows padded, as a camera frame's often are.
        let stride = 3 * width as usize + 5;
        let mut rows = vec![0xA5u8; stride * height as usize];
        for (y, row) in image.as_raw().chunks(3 * width as usize).enumerate() {
            rows[y * stride..][..row.len()].copy_from_slice(row);
        }
        let rgb_file = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.rgb"));
        std::fs::write(&rgb_file, &rows).unwrap();
        let follow_up = follow_up_answer(&case, &image);
        let output = run(
            &api,
            &[
                case.dir.to_str().unwrap(),
                case.image.to_str().unwrap(),
                &case.question,
                &case.params,
                &case.text,
                rgb_file.to_str().unwrap(),
                &width.to_string(),
                &height.to_string(),
                &stride.to_string(),
                FOLLOW_UP,
                &follow_up,
            ],
        );
        assert!(
            output.status.success(),
            "{name}:\n{}{}",
            utf8(&output.stdout),
            utf8(&output.stderr)
        );
    }
}

/// The second turn as the library answers it (its cache reuse is tested in imp's own tests).
fn follow_up_answer(case: &Case, image: &image::RgbImage) -> String {
    let model = ImpModel::load(&case.dir, &LoadOptions::default()).unwrap();
    let mut conversation = Conversation::new(&model);
    let options = GenerationOptions {
        max_new_tokens: case.max_new_tokens,
        ..Default::default()
    };
    let first = conversation
        .ask(
            &model,
            &case.question,
            std::slice::from_ref(image),
            &options,
            &mut |_| {},
        )
        .unwrap();
    assert_eq!(first.text, case.text);
    conversation
        .ask(&model, FOLLOW_UP, &[], &options, &mut |_| {})
        .unwrap()
        .text
}
