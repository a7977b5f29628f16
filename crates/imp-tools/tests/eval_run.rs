//! `imp eval run` end to end with the tiny random-weight model: answers are appended in
//! LLaVA's format, an interrupted run resumes without redoing finished questions, shards merge
//! into the same answers as one run, and bad inputs name the file and line.

use std::path::{Path, PathBuf};

use base64::Engine;
use image::RgbImage;
use imp::files::Overwrite;
use imp::{ImpModel, LoadOptions};
use imp_tools::eval::answers::{merge, read_answers, AnswerLine, Shard};
use imp_tools::eval::prompts::load_questions;
use imp_tools::eval::question::{Question, QuestionId};
use imp_tools::eval::run::{model_answerer, run, Progress, RunOptions};
use imp_tools::eval::Benchmark;

use crate::support::{images, model_fixture};

const MAX_NEW_TOKENS: usize = 4;

fn model() -> ImpModel {
    ImpModel::load(&model_fixture("imp-v1-3b"), &LoadOptions::default()).unwrap()
}

/// What answers the questions of a run.
type Answerer<'a> = dyn FnMut(&str, &[RgbImage]) -> imp_tools::Result<String> + 'a;

/// Answers `questions` into `out` with `answer`, ignoring progress reports.
fn answer_into(
    questions: &[Question],
    q_path: &Path,
    out: &Path,
    options: &RunOptions,
    answer: &mut Answerer,
) -> imp_tools::Result<Progress> {
    run(
        questions,
        q_path,
        &images(),
        out,
        options,
        answer,
        &mut |_| {},
    )
}

/// Five POPE-style questions about the fixture images (two share an image, as in POPE).
fn write_questions(dir: &Path) -> PathBuf {
    let rows = [
        (1, "pillow_hopper.jpg", "Is there a person in the image?"),
        (2, "pillow_hopper.jpg", "Is there a dog in the image?"),
        (3, "skimage_chelsea.png", "Is there a cat in the image?"),
        (4, "skimage_coffee.png", "Is there a cup in the image?"),
        (5, "skimage_camera.png", "Is there a camera in the image?"),
    ];
    let text: String = rows
        .iter()
        .map(|(id, image, q)| {
            let text = format!("{q}\nAnswer the question using a single word or phrase.");
            serde_json::json!({"question_id": id, "image": image, "text": text, "category": "random"})
                .to_string()
                + "\n"
        })
        .collect();
    let path = dir.join("questions.jsonl");
    std::fs::write(&path, text).unwrap();
    path
}

fn options(shard: Shard) -> RunOptions {
    RunOptions {
        model_id: "imp-v1-3b".into(),
        shard,
    }
}

fn texts(answers: &[AnswerLine]) -> Vec<(QuestionId, String)> {
    answers
        .iter()
        .map(|a| (a.question_id.clone(), a.text.clone()))
        .collect()
}

#[test]
fn run_resume_shard_and_merge() {
    let model = model();
    let dir = tempfile::tempdir().unwrap();
    let q_path = write_questions(dir.path());
    let questions = load_questions(Benchmark::Pope, &q_path).unwrap();

    // One uninterrupted run.
    let full = dir.path().join("full.jsonl");
    let mut updates = Vec::new();
    let done = run(
        &questions,
        &q_path,
        &images(),
        &full,
        &options(Shard::default()),
        &mut model_answerer(&model, MAX_NEW_TOKENS),
        &mut |p| updates.push(p),
    )
    .unwrap();
    assert_eq!(
        done,
        Progress {
            done: 5,
            total: 5,
            resumed: 0
        }
    );
    assert_eq!(
        updates.len(),
        6,
        "one report after resuming, one per answer"
    );
    let reference = read_answers(&full).unwrap();
    assert_eq!(reference.len(), 5);
    let first = &reference[0];
    assert_eq!(first.question_id, QuestionId::Int(1));
    assert_eq!(
        first.prompt,
        "Is there a person in the image?\nAnswer the question using a single word or phrase."
    );
    assert_eq!(first.model_id, "imp-v1-3b");
    assert_eq!(first.answer_id.len(), 22);
    let raw = std::fs::read_to_string(&full).unwrap();
    let line: serde_json::Value = serde_json::from_str(raw.lines().next().unwrap()).unwrap();
    for field in [
        "question_id",
        "prompt",
        "text",
        "answer_id",
        "model_id",
        "metadata",
    ] {
        assert!(
            line.get(field).is_some(),
            "answer lines carry `{field}`: {line}"
        );
    }

    // A run that dies after two answers, then a half-written third line.
    let resumed = dir.path().join("resumed.jsonl");
    let mut answered = 0;
    let mut generate = model_answerer(&model, MAX_NEW_TOKENS);
    let mut dies_after_two = |text: &str, images: &[RgbImage]| {
        if answered == 2 {
            return Err(imp::Error::InvalidArgument("killed".into()).into());
        }
        answered += 1;
        generate(text, images)
    };
    let err = answer_into(
        &questions,
        &q_path,
        &resumed,
        &options(Shard::default()),
        &mut dies_after_two,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("questions.jsonl:3: question_id 3: invalid argument: killed"),
        "{err}"
    );
    assert_eq!(
        read_answers(&resumed).unwrap().len(),
        2,
        "finished answers are kept"
    );
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&resumed)
        .unwrap();
    std::io::Write::write_all(&mut file, b"{\"question_id\": 3, \"prom").unwrap();
    drop(file);

    // Resuming asks only the three unanswered questions.
    let mut asked = Vec::new();
    let mut generate = model_answerer(&model, MAX_NEW_TOKENS);
    let mut counting = |text: &str, images: &[RgbImage]| {
        asked.push(text.to_owned());
        generate(text, images)
    };
    let done = answer_into(
        &questions,
        &q_path,
        &resumed,
        &options(Shard::default()),
        &mut counting,
    )
    .unwrap();
    assert_eq!(
        done,
        Progress {
            done: 5,
            total: 5,
            resumed: 2
        }
    );
    assert_eq!(asked.len(), 3);
    assert!(asked[0].starts_with("Is there a cat"));
    // Greedy decoding: the resumed file holds exactly the answers of the uninterrupted run.
    assert_eq!(texts(&read_answers(&resumed).unwrap()), texts(&reference));

    // Running again changes nothing.
    let before = std::fs::read_to_string(&resumed).unwrap();
    let mut never = |_: &str, _: &[RgbImage]| -> imp_tools::Result<String> {
        panic!("every question is answered")
    };
    answer_into(
        &questions,
        &q_path,
        &resumed,
        &options(Shard::default()),
        &mut never,
    )
    .unwrap();
    assert_eq!(std::fs::read_to_string(&resumed).unwrap(), before);

    // Two shards, merged, give the same answers in question order.
    let mut shard_files = Vec::new();
    for index in 0..2 {
        let out = dir.path().join(format!("2_{index}.jsonl"));
        let done = answer_into(
            &questions,
            &q_path,
            &out,
            &options(Shard { index, count: 2 }),
            &mut model_answerer(&model, MAX_NEW_TOKENS),
        )
        .unwrap();
        assert_eq!(done.total, [3, 2][index]);
        shard_files.push(out);
    }
    let merged = dir.path().join("merged.jsonl");
    assert_eq!(merge(&shard_files, &merged, Overwrite::Refuse).unwrap(), 5);
    assert_eq!(texts(&read_answers(&merged).unwrap()), texts(&reference));
    // The merged file is not replaced without --force, and never merged into one of its inputs.
    let err = merge(&shard_files, &merged, Overwrite::Refuse)
        .unwrap_err()
        .to_string();
    assert!(err.contains("--force"), "{err}");
    assert_eq!(merge(&shard_files, &merged, Overwrite::Replace).unwrap(), 5);
    let before = std::fs::read(&shard_files[0]).unwrap();
    let err = merge(&shard_files, &shard_files[0], Overwrite::Replace)
        .unwrap_err()
        .to_string();
    assert!(err.contains("is the input"), "{err}");
    assert_eq!(std::fs::read(&shard_files[0]).unwrap(), before);
    // Merging a shard twice is refused.
    let twice = [shard_files[0].clone(), shard_files[0].clone()];
    let err = merge(&twice, &dir.path().join("bad.jsonl"), Overwrite::Refuse)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("2_0.jsonl:1: question_id 1 with this prompt is already answered"),
        "{err}"
    );

    // A file of another model's answers is not resumed into.
    let err = answer_into(
        &questions,
        &q_path,
        &full,
        &RunOptions {
            model_id: "other".into(),
            shard: Shard::default(),
        },
        &mut never,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("full.jsonl:1: this file holds answers of model `imp-v1-3b`"),
        "{err}"
    );
}

#[test]
fn missing_images_and_bad_lines_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let q_path = dir.path().join("q.jsonl");
    std::fs::write(
        &q_path,
        "{\"question_id\": 1, \"image\": \"pillow_hopper.jpg\", \"text\": \"Q?\"}\n\
         {\"question_id\": 2, \"image\": \"nope.jpg\", \"text\": \"Q?\"}\n",
    )
    .unwrap();
    let questions = load_questions(Benchmark::Pope, &q_path).unwrap();
    let mut never = |_: &str, _: &[RgbImage]| -> imp_tools::Result<String> {
        panic!("nothing is asked before the images are checked")
    };
    let out = dir.path().join("a.jsonl");
    let err = answer_into(
        &questions,
        &q_path,
        &out,
        &options(Shard::default()),
        &mut never,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("q.jsonl:2: image "), "{err}");
    assert!(err.contains("nope.jpg of question_id 2 not found"), "{err}");
    assert!(!out.exists());

    std::fs::write(&q_path, "{\"question_id\": 1, \"image\": \"a.jpg\"}\n").unwrap();
    let err = load_questions(Benchmark::Pope, &q_path)
        .unwrap_err()
        .to_string();
    assert!(
        err.ends_with("q.jsonl:1: missing string field `text`"),
        "{err}"
    );
    std::fs::write(
        &q_path,
        "{\"question_id\": 1, \"image\": \"a.jpg\", \"text\": \"x\"}\n{oops\n",
    )
    .unwrap();
    let err = load_questions(Benchmark::Pope, &q_path)
        .unwrap_err()
        .to_string();
    assert!(err.contains("q.jsonl:2: not a JSON record"), "{err}");

    // A malformed line in an answer file that would be resumed is reported, not overwritten.
    std::fs::write(
        &q_path,
        "{\"question_id\": 1, \"image\": \"pillow_hopper.jpg\", \"text\": \"Q?\"}\n",
    )
    .unwrap();
    let questions = load_questions(Benchmark::Pope, &q_path).unwrap();
    std::fs::write(&out, "{\"question_id\": 1}\n").unwrap();
    let err = answer_into(
        &questions,
        &q_path,
        &out,
        &options(Shard::default()),
        &mut never,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("a.jsonl:1: not an answer line"), "{err}");
}

/// ScienceQA questions without a picture are asked without an image; MMBench images come from
/// the TSV and the answer lines carry the options as LLaVA's script records them.
#[test]
fn scienceqa_and_mmbench_prompts_reach_the_model() {
    let model = model();
    let dir = tempfile::tempdir().unwrap();
    let sqa = dir.path().join("sqa.json");
    std::fs::write(
        &sqa,
        r#"[
  {"id": "7", "conversations": [{"from": "human", "value": "Which is a mammal?\nA. cat\nB. trout"}, {"from": "gpt", "value": "A"}]},
  {"id": "8", "image": "pillow_hopper.jpg", "conversations": [{"from": "human", "value": "<image>\nContext: A photo.\nWho is it?\nA. Grace Hopper\nB. Ada Lovelace"}, {"from": "gpt", "value": "A"}]}
]"#,
    )
    .unwrap();
    let questions = load_questions(Benchmark::ScienceQa, &sqa).unwrap();
    assert_eq!(questions[1].line, 3);
    assert_eq!(
        questions[1].text,
        "Context: A photo.\nWho is it?\nA. Grace Hopper\nB. Ada Lovelace\n\
         Answer with the option's letter from the given choices directly."
    );
    assert_eq!(
        questions[1].prompt,
        format!("<image>\n{}", questions[1].text)
    );
    assert_eq!(questions[0].prompt, questions[0].text);
    let mut seen_images = Vec::new();
    let mut generate = model_answerer(&model, MAX_NEW_TOKENS);
    let mut recording = |text: &str, images: &[RgbImage]| {
        seen_images.push(images.len());
        generate(text, images)
    };
    let out = dir.path().join("sqa.jsonl");
    answer_into(
        &questions,
        &sqa,
        &out,
        &options(Shard::default()),
        &mut recording,
    )
    .unwrap();
    assert_eq!(seen_images, vec![0, 1]);

    let png = std::fs::read(images().join("pillow_hopper.jpg")).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(png);
    let tsv = dir.path().join("mmbench.tsv");
    std::fs::write(
        &tsv,
        format!(
            "index\tquestion\thint\tA\tB\tC\tD\tanswer\tcategory\timage\n\
             3\tWho is shown?\tA portrait.\tGrace Hopper\tAda Lovelace\tnan\t\tA\tcelebrity\t{b64}\n"
        ),
    )
    .unwrap();
    let questions: Vec<Question> = load_questions(Benchmark::MmBench, &tsv).unwrap();
    assert_eq!(
        questions[0].prompt,
        "A portrait.\nWho is shown?\nA. Grace Hopper\nB. Ada Lovelace"
    );
    let out = dir.path().join("mmbench.jsonl");
    answer_into(
        &questions,
        &tsv,
        &out,
        &options(Shard::default()),
        &mut model_answerer(&model, MAX_NEW_TOKENS),
    )
    .unwrap();
    let answers = read_answers(&out).unwrap();
    assert_eq!(answers[0].question_id, QuestionId::Int(3));
    assert_eq!(
        answers[0].extra["options"],
        serde_json::json!(["Grace Hopper", "Ada Lovelace"])
    );
    assert_eq!(
        answers[0].extra["option_char"],
        serde_json::json!(["A", "B"])
    );
    assert_eq!(answers[0].extra["round_id"], 0);
}
