//! Shared by the test modules: fixture paths, scratch files, and scoring shorthands.

use std::path::{Path, PathBuf};

use imp_tools::eval::score::{score, ScoreInputs, ScoreReport};
use imp_tools::eval::Benchmark;
use serde_json::{json, Value};

/// The benchmark files copied from LLaVA and POPE (see `fixtures/eval/SOURCES.md`).
pub fn eval_fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/eval")
        .join(path)
}

/// The engine's fixtures (tiny models, test images) stay with the engine's tests.
fn imp_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../imp/tests/fixtures")
}

pub fn model_fixture(name: &str) -> PathBuf {
    imp_fixtures().join("models").join(name)
}

/// The photo and question a tiny model's reference outputs were made with.
pub fn model_question(name: &str) -> (String, String) {
    let path = model_fixture(name).join("expected.json");
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let field = |key: &str| expected[key].as_str().unwrap().to_owned();
    (field("image"), field("question"))
}

pub fn images() -> PathBuf {
    imp_fixtures().join("images")
}

/// Files written into a temporary folder that lives as long as this value.
pub struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    pub fn jsonl(&self, name: &str, records: &[Value]) -> PathBuf {
        let text: String = records.iter().map(|r| format!("{r}\n")).collect();
        self.write(name, &text)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// An answer line as LLaVA's scripts write it.
pub fn answer(id: Value, prompt: &str, text: &str) -> Value {
    json!({"question_id": id, "prompt": prompt, "text": text, "answer_id": "x", "model_id": "m", "metadata": {}})
}

pub fn inputs<'a>(
    benchmark: Benchmark,
    answers: &'a Path,
    questions: Option<&'a Path>,
    annotations: &'a [PathBuf],
    submission: Option<&'a Path>,
) -> ScoreInputs<'a> {
    ScoreInputs {
        benchmark,
        answers,
        questions,
        annotations,
        submission,
        label: None,
        overwrite: imp::files::Overwrite::Refuse,
    }
}

pub fn metric(report: &ScoreReport, name: &str) -> f64 {
    report
        .metrics
        .iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("no metric {name} in {report:?}"))
        .value
}

/// Each named metric equals its expected value (to rounding).
pub fn assert_metrics(report: &ScoreReport, expected: &[(&str, f64)]) {
    for &(name, value) in expected {
        let got = metric(report, name);
        assert!((got - value).abs() < 1e-9, "{name}: {got} != {value}");
    }
}

/// Each input fails to score with a message containing its text.
pub fn assert_score_errors(cases: &[(ScoreInputs, &str)]) {
    for (input, expected) in cases {
        let err = score(input).unwrap_err().to_string();
        assert!(err.contains(expected), "{err}");
    }
}
