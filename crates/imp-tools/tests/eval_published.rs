//! `imp eval score` against published numbers: the LLaVA authors released LLaVA-1.5-13B's
//! answer files (tests/fixtures/eval, copied from LLaVA's eval.zip); scoring them must give the
//! numbers reported for LLaVA-1.5-13B.
//!
//! Published: LLaVA's docs/MODEL_ZOO.md (github.com/haotian-liu/LLaVA), table "LLaVA-v1.5",
//! row "LLaVA-1.5 | 13B | full_ft-1e": SQA 71.6, POPE 85.9 (the LLaVA-1.5 paper, arXiv
//! 2310.03744, reports the same 13B results). POPE's number is the F1 averaged over the three
//! splits; SQA's is the accuracy on questions with an image.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use imp_tools::eval::scienceqa::{count_choices, parse_choice};
use imp_tools::eval::score::{score, ScoreInputs, ScoreReport};
use imp_tools::eval::Benchmark;

use crate::support::{eval_fixture as fixture, inputs, metric};

fn pope() -> ScoreReport {
    let labels: Vec<PathBuf> = ["adversarial", "popular", "random"]
        .iter()
        .map(|s| fixture(&format!("pope/coco_pope_{s}.json")))
        .collect();
    let questions = fixture("pope/llava_pope_test.jsonl");
    let answers = fixture("pope/llava-v1.5-13b.jsonl");
    score(&inputs(
        Benchmark::Pope,
        &answers,
        Some(&questions),
        &labels,
        None,
    ))
    .unwrap()
}

#[test]
fn pope_reproduces_llava_1_5_13b() {
    let report = pope();
    assert_eq!(report.label, "llava-v1.5-13b");
    let f1 = metric(&report, "F1 (avg)");
    assert_eq!(
        format!("{f1:.1}"),
        "85.9",
        "published POPE F1 85.9, got {f1}"
    );
    // Per split, the confusion counts and metrics eval_pope.py prints for these files.
    let splits = report.details["splits"].as_array().unwrap();
    let expected = [
        (
            "adversarial",
            3000,
            [1182, 117, 1383, 318],
            84.45873526259379,
            85.5,
        ),
        (
            "popular",
            3000,
            [1182, 59, 1441, 318],
            86.24589565851879,
            87.43333333333333,
        ),
        (
            "random",
            2910,
            [1182, 31, 1379, 318],
            87.13601179506082,
            88.00687285223368,
        ),
    ];
    for (split, (name, n, [tp, fp, tn, fn_], f1, accuracy)) in splits.iter().zip(expected) {
        assert_eq!(split["split"], name);
        assert_eq!(split["questions"], n);
        let counts = ["tp", "fp", "tn", "fn"].map(|k| split[k].as_u64().unwrap());
        assert_eq!(counts, [tp, fp, tn, fn_], "{name}");
        assert!((split["f1"].as_f64().unwrap() - f1).abs() < 1e-9, "{name}");
        assert!(
            (split["accuracy"].as_f64().unwrap() - accuracy).abs() < 1e-9,
            "{name}"
        );
    }
    assert!((metric(&report, "accuracy (avg)") - 86.98006872852234).abs() < 1e-9);
}

fn scienceqa(answers: &Path) -> ScoreReport {
    let questions = fixture("scienceqa/llava_test_CQM-A.json");
    score(&ScoreInputs {
        label: Some("llava-v1.5-13b".into()),
        ..inputs(Benchmark::ScienceQa, answers, Some(&questions), &[], None)
    })
    .unwrap()
}

#[test]
fn scienceqa_img_reproduces_llava_1_5_13b() {
    let result = fixture("scienceqa/llava-v1.5-13b_result.json");
    let report = scienceqa(&result);
    let img = metric(&report, "IMG accuracy");
    assert_eq!(
        format!("{img:.1}"),
        "71.6",
        "published SQA-IMG 71.6, got {img}"
    );
    assert_eq!(report.details["image_questions"], 2017);
    assert_eq!(report.details["image_correct"], 1445);
    // The result file records what eval_science_qa.py computed: 3155 of 4241 right.
    let published: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&result).unwrap()).unwrap();
    assert_eq!(report.details["correct"], published["correct"]);
    assert_eq!(report.details["questions"], published["count"]);
    let accuracy = metric(&report, "accuracy");
    assert!((accuracy - published["acc"].as_f64().unwrap()).abs() < 1e-9);
}

/// The result file also records, per question, the option index eval_science_qa.py parsed
/// (-1 when it could not): every one must match.
#[test]
fn scienceqa_option_parsing_matches_the_reference_on_every_answer() {
    let published: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("scienceqa/llava-v1.5-13b_result.json")).unwrap(),
    )
    .unwrap();
    let questions: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(fixture("scienceqa/llava_test_CQM-A.json")).unwrap(),
    )
    .unwrap();
    let choices: HashMap<&str, usize> = questions
        .iter()
        .map(|q| {
            let text = q["conversations"][0]["value"].as_str().unwrap();
            (q["id"].as_str().unwrap(), count_choices(text))
        })
        .collect();
    let outputs = published["outputs"].as_object().unwrap();
    assert_eq!(outputs.len(), 4241);
    for (id, text) in outputs {
        let parsed = parse_choice(text.as_str().unwrap(), choices[id.as_str()]);
        let reference = published["results"][id].as_i64().unwrap();
        assert_eq!(
            parsed.map_or(-1, |i| i as i64),
            reference,
            "question {id}: {text}"
        );
    }
}

/// The same answers as LLaVA-format lines score the same, and a missing answer is an error
/// naming the question's line.
#[test]
fn scienceqa_answer_lines_and_missing_answers() {
    let published: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("scienceqa/llava-v1.5-13b_result.json")).unwrap(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<(&String, String)> = published["outputs"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(id, text)| {
            let line = serde_json::json!({"question_id": id, "prompt": "", "text": text});
            (id, line.to_string())
        })
        .collect();
    let answers = dir.path().join("answers.jsonl");
    let write = |skip: &str| {
        let kept: Vec<&str> = lines
            .iter()
            .filter(|(id, _)| *id != skip)
            .map(|(_, line)| line.as_str())
            .collect();
        std::fs::write(&answers, kept.join("\n") + "\n").unwrap();
    };
    write("none");
    let report = scienceqa(&answers);
    assert_eq!(format!("{:.1}", metric(&report, "IMG accuracy")), "71.6");

    write("4");
    let questions = fixture("scienceqa/llava_test_CQM-A.json");
    let err = score(&inputs(
        Benchmark::ScienceQa,
        &answers,
        Some(&questions),
        &[],
        None,
    ))
    .unwrap_err()
    .to_string();
    // The first question (id "4") starts on line 2 of the question file.
    assert!(
        err.contains("llava_test_CQM-A.json:2: question_id \"4\" has no answer"),
        "{err}"
    );
    assert!(err.contains("1 of 4241 questions unanswered"), "{err}");
}
