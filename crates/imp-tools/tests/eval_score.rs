//! `imp eval score` on small hand-made benchmark files whose expected scores follow from the
//! official rules (each case says how), the submission files, bad inputs, and `imp eval report`.

use std::io::Read;

use imp_tools::eval::report::{read_reports, Comparison};
use imp_tools::eval::score::score;
use imp_tools::eval::Benchmark;
use serde_json::{json, Value};

use crate::support::{answer, assert_metrics, assert_score_errors, inputs, Files};

#[test]
fn textvqa_soft_accuracy() {
    let f = Files::new();
    let truth = f.write(
        "TextVQA_0.5.1_val.json",
        &json!({"data": [
            {"image_id": "img1", "question": "What brand?", "answers": vec!["nikon"; 10]},
            {"image_id": "img1", "question": "What year?", "answers": ([vec!["1999"; 2], vec!["2000"; 8]].concat())},
            {"image_id": "img2", "question": "How many?", "answers": ([vec!["two"; 3], vec!["three"; 7]].concat())},
        ]})
        .to_string(),
    );
    let prompt = |q: &str| {
        format!("{q}\nReference OCR token: NIKON, 1999\nAnswer the question using a single word or phrase.")
    };
    let answers = f.jsonl(
        "answers.jsonl",
        &[
            answer(json!("img1"), &prompt("What brand?"), "Nikon."),
            answer(json!("img1"), &prompt("What year?"), "1999"),
            answer(json!("img2"), &prompt("How many?"), "2"),
        ],
    );
    let annotations = [truth];
    let report = score(&inputs(
        Benchmark::TextVqa,
        &answers,
        None,
        &annotations,
        None,
    ))
    .unwrap();
    // 1 (all ten say nikon) + 0.6 (two of ten, leave-one-out) + 0.9 ("two" → "2", three of ten).
    assert_metrics(&report, &[("accuracy", 100.0 * 2.5 / 3.0)]);

    let bad = f.jsonl(
        "bad.jsonl",
        &[
            answer(json!("img1"), &prompt("What brand?"), "Nikon."),
            answer(json!("img9"), &prompt("What brand?"), "Nikon."),
        ],
    );
    assert_score_errors(&[(
        inputs(Benchmark::TextVqa, &bad, None, &annotations, None),
        "bad.jsonl:2: image img9 with question \"what brand?\" is not in",
    )]);
}

#[test]
fn vqav2_accuracy_and_test_dev_submission() {
    let f = Files::new();
    let yes: Vec<Value> = (0..10).map(|_| json!({"answer": "yes"})).collect();
    let number: Vec<Value> = (0..10)
        .map(|i| json!({"answer": if i < 3 { "2" } else { "3" }}))
        .collect();
    let truth = f.write(
        "v2_mscoco_val2014_annotations.json",
        &json!({"annotations": [
            {"question_id": 1, "answer_type": "yes/no", "answers": yes},
            {"question_id": 2, "answer_type": "number", "answers": number},
        ]})
        .to_string(),
    );
    let answers = f.jsonl(
        "answers.jsonl",
        &[answer(json!(1), "q", "Yes"), answer(json!(2), "q", "two")],
    );
    let annotations = [truth];
    let report = score(&inputs(
        Benchmark::VqaV2,
        &answers,
        None,
        &annotations,
        None,
    ))
    .unwrap();
    assert_metrics(
        &report,
        &[
            ("accuracy", 95.0),
            ("accuracy yes/no", 100.0),
            ("accuracy number", 90.0),
        ],
    );

    // The VQA API wants every annotated question answered.
    let one = f.jsonl("one.jsonl", &[answer(json!(1), "q", "Yes")]);
    assert_score_errors(&[(
        inputs(Benchmark::VqaV2, &one, None, &annotations, None),
        "1 annotated questions have no answer",
    )]);

    // test2015 holds more questions than test-dev answers: those get an empty answer.
    let questions = f.jsonl(
        "llava_vqav2_mscoco_test2015.jsonl",
        &[1, 2, 3].map(|id| json!({"question_id": id, "image": "x.jpg", "text": "q"})),
    );
    let upload = f.path("upload.json");
    score(&inputs(
        Benchmark::VqaV2,
        &answers,
        Some(&questions),
        &[],
        Some(&upload),
    ))
    .unwrap();
    let written: Value = serde_json::from_str(&std::fs::read_to_string(&upload).unwrap()).unwrap();
    assert_eq!(
        written,
        json!([
            {"question_id": 1, "answer": "yes"},
            {"question_id": 2, "answer": "2"},
            {"question_id": 3, "answer": ""},
        ])
    );
}

#[test]
fn vizwiz_accuracy_and_submission() {
    let f = Files::new();
    let questions = f.jsonl(
        "llava_test.jsonl",
        &[
            json!({"question_id": 0, "image": "VizWiz_val_00000000.jpg", "text": "What is this?"}),
            json!({"question_id": 1, "image": "VizWiz_val_00000001.jpg", "text": "What color?"}),
        ],
    );
    let humans = |spec: &[(&str, usize)]| -> Vec<Value> {
        spec.iter()
            .flat_map(|(a, n)| {
                (0..*n).map(move |_| json!({"answer": a, "answer_confidence": "yes"}))
            })
            .collect()
    };
    let truth = f.write(
        "val.json",
        &json!([
            {"image": "VizWiz_val_00000000.jpg", "answer_type": "unanswerable", "answers": humans(&[("unanswerable", 10)])},
            {"image": "VizWiz_val_00000001.jpg", "answer_type": "other", "answers": humans(&[("red", 1), ("blue", 9)])},
        ])
        .to_string(),
    );
    let answers = f.jsonl(
        "answers.jsonl",
        &[
            answer(json!(0), "What is this?", "Unanswerable"),
            answer(json!(1), "What color?", "Red"),
        ],
    );
    let annotations = [truth];
    let upload = f.path("upload.json");
    let report = score(&inputs(
        Benchmark::VizWiz,
        &answers,
        Some(&questions),
        &annotations,
        Some(&upload),
    ))
    .unwrap();
    // 1.0 and 0.3 (one of ten said red).
    assert_metrics(&report, &[("accuracy", 65.0)]);
    let written: Value = serde_json::from_str(&std::fs::read_to_string(&upload).unwrap()).unwrap();
    assert_eq!(
        written,
        json!([
            {"image": "VizWiz_val_00000000.jpg", "answer": "unanswerable"},
            {"image": "VizWiz_val_00000001.jpg", "answer": "red"},
        ])
    );
}

#[test]
fn gqa_exact_match() {
    let f = Files::new();
    let truth = f.write(
        "testdev_balanced_questions.json",
        &json!({
            "q1": {"answer": "yes", "isBalanced": true, "types": {"structural": "verify"}},
            "q2": {"answer": "red", "isBalanced": true, "types": {"structural": "query"}},
            "q3": {"answer": "left", "isBalanced": false, "types": {"structural": "query"}},
            "q4": {"answer": "table", "isBalanced": true, "types": {"structural": "choose"}},
        })
        .to_string(),
    );
    let answers = f.jsonl(
        "answers.jsonl",
        &[
            answer(json!("q1"), "q", "Yes."),
            answer(json!("q2"), "q", "Red"),
            answer(json!("q4"), "q", "chair"),
        ],
    );
    let annotations = [truth];
    let predictions = f.path("testdev_balanced_predictions.json");
    let report = score(&inputs(
        Benchmark::Gqa,
        &answers,
        None,
        &annotations,
        Some(&predictions),
    ))
    .unwrap();
    // q3 is not balanced and needs no prediction; "Yes." → "yes" and "Red" → "red" match.
    assert_metrics(
        &report,
        &[("accuracy", 200.0 / 3.0), ("binary", 50.0), ("open", 100.0)],
    );
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(&predictions).unwrap()).unwrap();
    assert_eq!(written[0], json!({"questionId": "q1", "prediction": "yes"}));

    let partial = f.jsonl("partial.jsonl", &[answer(json!("q2"), "q", "red")]);
    assert_score_errors(&[(
        inputs(Benchmark::Gqa, &partial, None, &annotations, None),
        "question q1 has no prediction",
    )]);
}

#[test]
fn mme_perception_and_cognition() {
    let f = Files::new();
    let gt = f.path("MME_Benchmark_release_version");
    let tasks = imp_tools::eval::mme::PERCEPTION
        .iter()
        .chain(&imp_tools::eval::mme::COGNITION);
    let mut answers = Vec::new();
    for task in tasks {
        // `existence` uses the images/ + questions_answers_YN/ layout, the others flat folders;
        // `artwork` has MME's double space before the instruction.
        let qa_dir = if *task == "existence" {
            std::fs::create_dir_all(gt.join(task).join("images")).unwrap();
            gt.join(task).join("questions_answers_YN")
        } else {
            gt.join(task)
        };
        let space = if *task == "artwork" { "  " } else { " " };
        let images = if *task == "color" { 2 } else { 1 };
        for image in 0..images {
            let lines = format!(
                "Is there a cat?{space}Please answer yes or no.\tYes\nIs there a dog?{space}Please answer yes or no.\tNo\n"
            );
            std::fs::create_dir_all(&qa_dir).unwrap();
            std::fs::write(qa_dir.join(format!("{image:04}.txt")), lines).unwrap();
            let id = format!("{task}/{image:04}.jpg");
            let (cat, dog) = match (*task, image) {
                ("existence", _) => ("Yes", "Yes"),    // one of two right: 50 + 0
                ("count", _) => ("I think yes", "No"), // "other" is wrong: 50 + 0
                ("color", 1) => ("No", "No"),          // 3 of 4 right, 1 of 2 images: 75 + 50
                _ => ("Yes", "No"),                    // 100 + 100
            };
            let prompt =
                |q: &str| format!("{q}\nAnswer the question using a single word or phrase.");
            answers.push(answer(json!(id), &prompt("Is there a cat?"), cat));
            answers.push(answer(json!(id), &prompt("Is there a dog?"), dog));
        }
    }
    let answers_path = f.jsonl("answers.jsonl", &answers);
    let annotations = [gt.clone()];
    let report = score(&inputs(
        Benchmark::Mme,
        &answers_path,
        None,
        &annotations,
        None,
    ))
    .unwrap();
    assert_metrics(
        &report,
        &[
            ("perception", 2000.0 - 150.0 - 150.0 - 75.0),
            ("cognition", 800.0),
        ],
    );
    let count = &report.details["subtasks"][1];
    assert_eq!(count["name"], "count");
    assert_eq!(count["other"], 1);

    let missing = f.jsonl("missing.jsonl", &answers[2..]);
    let mut wrong = answers.clone();
    wrong[0]["prompt"] = json!("Is there a horse?");
    let wrong = f.jsonl("wrong.jsonl", &wrong);
    assert_score_errors(&[
        (
            inputs(Benchmark::Mme, &missing, None, &annotations, None),
            "no answers for MME subtask(s) existence",
        ),
        (
            inputs(Benchmark::Mme, &wrong, None, &annotations, None),
            "wrong.jsonl:1: no ground truth for this question of existence/0000.jpg",
        ),
    ]);
}

#[test]
fn mmbench_circular_scoring_and_submission() {
    let f = Files::new();
    // Index 0 and its rotated copy 1000000 form one circular group; 1 and 2 stand alone.
    let tsv = f.write(
        "mmbench_dev_20230712.tsv",
        "index\tquestion\thint\tA\tB\tC\tD\tanswer\tcategory\timage\tsource\tl2-category\tcomment\tsplit\n\
         0\tWhat fruit?\tnan\tapple\tpear\tplum\tfig\tA\tfood\tAAAA\ts\tl2\tnan\tdev\n\
         1000000\tWhat fruit?\tnan\tpear\tplum\tfig\tapple\tD\tfood\tAAAA\ts\tl2\tnan\tdev\n\
         1\tWhich animal?\tA farm.\tcow\thorse\tnan\tnan\tB\tanimals\tAAAA\ts\tl2\tnan\tdev\n\
         2\tWhich color?\t\tred\tblue\t\t\tA\tanimals\tAAAA\ts\tl2\tnan\tdev\n",
    );
    let answers = f.jsonl(
        "answers.jsonl",
        &[
            answer(json!(0), "p", "A"),
            answer(json!(1000000), "p", "B"),
            answer(json!(1), "p", "The answer is B."),
            answer(json!(2), "p", "It is purple"),
        ],
    );
    let upload = f.path("upload.xlsx");
    let report = score(&inputs(
        Benchmark::MmBench,
        &answers,
        Some(&tsv),
        &[],
        Some(&upload),
    ))
    .unwrap();
    // Rows right: 0 and 1 → 2 of 4. Groups right: only 1 (0's copy is wrong, 2 is unreadable).
    assert_metrics(
        &report,
        &[
            ("vanilla accuracy", 50.0),
            ("circular accuracy", 100.0 / 3.0),
        ],
    );
    assert_eq!(report.details["unparsed"], 1);
    assert_eq!(report.details["circular_by_category"]["animals"], 50.0);
    assert!(report.notes[0].starts_with("1 answers are not an option letter"));

    // The upload: convert_mmbench_for_submission.py's columns, `prediction` at position 6.
    let mut archive = zip::ZipArchive::new(std::fs::File::open(&upload).unwrap()).unwrap();
    let mut sheet = String::new();
    archive
        .by_name("xl/worksheets/sheet1.xml")
        .unwrap()
        .read_to_string(&mut sheet)
        .unwrap();
    let cells: Vec<&str> = sheet
        .split("<t xml:space=\"preserve\">")
        .skip(1)
        .map(|s| s.split("</t>").next().unwrap())
        .collect();
    assert_eq!(
        cells[..10],
        [
            "index",
            "question",
            "A",
            "B",
            "C",
            "D",
            "prediction",
            "answer",
            "split",
            "What fruit?"
        ],
        "{sheet}"
    );
    assert!(sheet.contains("<c r=\"A3\"><v>1000000</v></c>"));
    assert!(sheet.contains(
        "<c r=\"G4\" t=\"inlineStr\"><is><t xml:space=\"preserve\">The answer is B.</t>"
    ));
    // Options pandas reads as NaN stay empty.
    assert!(!sheet.contains("r=\"E4\""), "{sheet}");
}

#[test]
fn mmvet_writes_the_grader_input() {
    let f = Files::new();
    let answers = f.jsonl(
        "answers.jsonl",
        &[
            answer(json!(0), "q", "x = 3"),
            answer(json!(1), "q", "A cat."),
        ],
    );
    let out = f.path("results.json");
    let report = score(&inputs(Benchmark::MmVet, &answers, None, &[], Some(&out))).unwrap();
    assert!(report.metrics.is_empty());
    let written: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(written, json!({"v1_0": "x = 3", "v1_1": "A cat."}));
    assert_score_errors(&[(
        inputs(Benchmark::MmVet, &answers, None, &[], None),
        "--submission",
    )]);
}

#[test]
fn pope_bad_inputs_name_file_and_line() {
    let f = Files::new();
    let questions = f.jsonl(
        "llava_pope_test.jsonl",
        &[
            json!({"question_id": 1, "image": "a.jpg", "text": "Is there a dog in the image?\nAnswer the question using a single word or phrase.", "category": "random"}),
            json!({"question_id": 2, "image": "a.jpg", "text": "Is there a cat in the image?\nAnswer the question using a single word or phrase.", "category": "random"}),
        ],
    );
    let labels = [f.jsonl(
        "coco_pope_random.json",
        &[
            json!({"question_id": 1, "image": "a.jpg", "text": "Is there a dog in the image?", "label": "yes"}),
            json!({"question_id": 2, "image": "a.jpg", "text": "Is there a cat in the image?", "label": "no"}),
        ],
    )];
    let good = f.jsonl(
        "good.jsonl",
        &[answer(json!(1), "p", "Yes"), answer(json!(2), "p", "No")],
    );
    let report = score(&inputs(
        Benchmark::Pope,
        &good,
        Some(&questions),
        &labels,
        None,
    ))
    .unwrap();
    assert_metrics(&report, &[("F1 (avg)", 100.0)]);

    let unknown = f.jsonl(
        "unknown.jsonl",
        &[answer(json!(1), "p", "Yes"), answer(json!(7), "p", "No")],
    );
    let twice = f.jsonl(
        "twice.jsonl",
        &[answer(json!(1), "p", "Yes"), answer(json!(1), "p", "No")],
    );
    let malformed = f.write(
        "malformed.jsonl",
        "{\"question_id\": 1, \"text\": \"Yes\"}\nYes\n",
    );
    let renamed = [f.jsonl("random.json", &[])];
    // Labels of another POPE version (the later spelling fixes) do not line up.
    let other = [f.jsonl(
        "other/coco_pope_random.json",
        &[json!({"question_id": 1, "image": "a.jpg", "text": "Is there a dogs in the image?", "label": "yes"})],
    )];
    let questions = Some(questions.as_path());
    assert_score_errors(&[
        (
            inputs(Benchmark::Pope, &unknown, questions, &labels, None),
            "unknown.jsonl:2: question_id 7 is not in",
        ),
        (
            inputs(Benchmark::Pope, &twice, questions, &labels, None),
            "twice.jsonl:2: question_id 1 is answered twice (first at line 1)",
        ),
        (
            inputs(Benchmark::Pope, &malformed, questions, &labels, None),
            "malformed.jsonl:2: not a JSON record",
        ),
        (
            inputs(Benchmark::Pope, &good, questions, &renamed, None),
            "must be named coco_pope_<split>.json",
        ),
        (
            inputs(Benchmark::Pope, &good, questions, &other, None),
            "llava_pope_test.jsonl:1: no label for image a.jpg",
        ),
        (
            inputs(Benchmark::Pope, &good, None, &labels, None),
            "pope needs --questions",
        ),
    ]);
}

#[test]
fn report_compares_scored_runs() {
    let f = Files::new();
    let questions = f.jsonl(
        "q.jsonl",
        &[
            json!({"question_id": 1, "image": "a.jpg", "text": "Is there a dog in the image?\nA", "category": "random"}),
            json!({"question_id": 2, "image": "a.jpg", "text": "Is there a cat in the image?\nA", "category": "random"}),
        ],
    );
    let labels = [f.jsonl(
        "coco_pope_random.json",
        &[
            json!({"image": "a.jpg", "text": "Is there a dog in the image?", "label": "yes"}),
            json!({"image": "a.jpg", "text": "Is there a cat in the image?", "label": "no"}),
        ],
    )];
    let mut runs = Vec::new();
    for (label, second) in [("f32", "No"), ("q4_k", "Yes")] {
        let answers = f.jsonl(
            &format!("{label}.jsonl"),
            &[answer(json!(1), "p", "Yes"), answer(json!(2), "p", second)],
        );
        let mut input = inputs(Benchmark::Pope, &answers, Some(&questions), &labels, None);
        input.label = Some(label.into());
        let report = score(&input).unwrap();
        let path = f.write(
            &format!("{label}.json"),
            &serde_json::to_string(&report).unwrap(),
        );
        runs.push(path);
    }
    let reports = read_reports(&runs).unwrap();
    let comparison = Comparison::new(&reports).unwrap();
    let table = comparison.to_text();
    // f32: TP 1, TN 1 → F1 100. q4_k: TP 1, FP 1 → precision 50, recall 100, F1 66.67.
    let f1_line = table.lines().find(|l| l.contains("F1 (avg)")).unwrap();
    assert!(f1_line.ends_with("100.00  66.67"), "{table}");
    let png = f.path("report.png");
    comparison
        .write_chart(&png, imp::files::Overwrite::Refuse)
        .unwrap();
    let image = image::open(&png).unwrap();
    assert_eq!(image.width(), 240);
}
