//! MME, scored as LLaVA's `convert_answer_to_mme.py` and MME's official `calculation.py` do:
//! each answer is looked up in the benchmark's ground-truth files by subtask, file and question
//! (LLaVA's short-answer instruction swapped back for MME's "Please answer yes or no."), read as
//! yes / no / other from its first four characters, and every subtask scores accuracy plus
//! accuracy+ (images with both questions right), in percent. Perception sums ten subtasks,
//! cognition four.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Serialize;

use super::answer_norm::is_py_space;
use super::answers::AnswerLine;
use super::error_at;
use super::files::read_text;
use super::question::QuestionId;
use crate::{Error, Result};

pub const PERCEPTION: [&str; 10] = [
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
];
pub const COGNITION: [&str; 4] = [
    "commonsense_reasoning",
    "numerical_calculation",
    "text_translation",
    "code_reasoning",
];

const SHORT_ANSWER: &str = "Answer the question using a single word or phrase.";
const YES_OR_NO: &str = " Please answer yes or no.";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reading {
    Yes,
    No,
    Other,
}

/// `parse_pred_ans` of `calculation.py`: "yes" or "no" exactly, else whichever of the two the
/// first four characters contain (yes first), else other.
pub fn read_answer(answer: &str) -> Reading {
    let answer = answer.to_lowercase();
    let head: String = answer.chars().take(4).collect();
    match answer.as_str() {
        "yes" => Reading::Yes,
        "no" => Reading::No,
        _ if head.contains("yes") => Reading::Yes,
        _ if head.contains("no") => Reading::No,
        _ => Reading::Other,
    }
}

/// One subtask's numbers; accuracies in percent, `score` = accuracy + accuracy+.
#[derive(Clone, Debug, Serialize)]
pub struct Subtask {
    pub name: String,
    pub questions: usize,
    pub images: usize,
    pub accuracy: f64,
    pub accuracy_plus: f64,
    pub score: f64,
    /// Answers read as neither yes nor no.
    pub other: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct MmeScore {
    pub perception: f64,
    pub cognition: f64,
    pub subtasks: Vec<Subtask>,
}

/// (subtask, ground-truth file, question) -> "yes" / "no".
type GroundTruth = HashMap<(String, String, String), String>;

#[derive(Default)]
struct TaskTally {
    /// image -> (right answers, questions)
    images: BTreeMap<String, (usize, usize)>,
    /// Answers read as neither yes nor no.
    other: usize,
}

/// Reads `MME_Benchmark_release_version`: one folder per subtask, holding either the `.txt`
/// files next to the images or `images/` and `questions_answers_YN/`; each line of a `.txt` is
/// `question<TAB>answer`.
pub fn read_ground_truth(dir: &Path) -> Result<GroundTruth> {
    let mut truth = GroundTruth::new();
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries {
        let subtask_dir = entry.map_err(|e| Error::io(dir, e))?.path();
        if !subtask_dir.is_dir() {
            continue;
        }
        let subtask = file_name(&subtask_dir);
        let qa_dir = if subtask_dir.join("images").exists() {
            subtask_dir.join("questions_answers_YN")
        } else {
            subtask_dir.clone()
        };
        let files = std::fs::read_dir(&qa_dir).map_err(|e| Error::io(&qa_dir, e))?;
        for file in files {
            let path = file.map_err(|e| Error::io(&qa_dir, e))?.path();
            if path.extension().is_none_or(|e| e != "txt") {
                continue;
            }
            for (i, line) in read_text(&path)?.lines().enumerate() {
                let fields: Vec<&str> = line.trim_matches(is_py_space).split('\t').collect();
                let [question, answer] = fields[..] else {
                    return Err(error_at(&path, i + 1, "expected `question<TAB>answer`"));
                };
                truth.insert(
                    (subtask.clone(), file_name(&path), question.to_owned()),
                    answer.to_owned(),
                );
            }
        }
    }
    Ok(truth)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Scores LLaVA-format MME answers (question ids `subtask/image.ext`) against the ground truth
/// in `gt_dir`. All fourteen subtasks must be answered, as `calculation.py` reads each one.
pub fn score(answers: &[AnswerLine], answers_path: &Path, gt_dir: &Path) -> Result<MmeScore> {
    let truth = read_ground_truth(gt_dir)?;
    let mut tasks: BTreeMap<String, TaskTally> = BTreeMap::new();
    for answer in answers {
        let at_line = |message: String| error_at(answers_path, answer.line, message);
        let QuestionId::Str(id) = &answer.question_id else {
            return Err(at_line(format!(
                "MME question ids are `subtask/image` strings, not {}",
                answer.question_id
            )));
        };
        let subtask = id.split('/').next().unwrap_or_default().to_owned();
        let image = id.rsplit('/').next().unwrap_or_default();
        let file = format!("{}.txt", image.split('.').next().unwrap_or_default());
        let gt = lookup(&truth, &subtask, &file, &answer.prompt).ok_or_else(|| {
            at_line(format!(
                "no ground truth for this question of {id} in {}",
                gt_dir.display()
            ))
        })?;
        let gt = match gt.to_lowercase().as_str() {
            "yes" => Reading::Yes,
            "no" => Reading::No,
            other => {
                return Err(at_line(format!(
                    "the ground truth of this question is {other:?}, not yes or no"
                )))
            }
        };
        let reading = read_answer(&answer.text);
        let task = tasks.entry(subtask).or_default();
        let counts = task.images.entry(id.clone()).or_default();
        counts.0 += usize::from(reading == gt);
        counts.1 += 1;
        task.other += usize::from(reading == Reading::Other);
    }
    let missing: Vec<&str> = PERCEPTION
        .iter()
        .chain(&COGNITION)
        .copied()
        .filter(|t| !tasks.contains_key(*t))
        .collect();
    if !missing.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{}: no answers for MME subtask(s) {}; the MME score needs all fourteen",
            answers_path.display(),
            missing.join(", ")
        )));
    }
    let subtasks: Vec<Subtask> = PERCEPTION
        .iter()
        .chain(&COGNITION)
        .map(|&name| {
            let TaskTally { images, other } = &tasks[name];
            let questions: usize = images.values().map(|c| c.1).sum();
            let right: usize = images.values().map(|c| c.0).sum();
            let all_right = images.values().filter(|c| c.0 == c.1).count();
            let accuracy = 100.0 * right as f64 / questions as f64;
            let accuracy_plus = 100.0 * all_right as f64 / images.len() as f64;
            Subtask {
                name: name.to_owned(),
                questions,
                images: images.len(),
                accuracy,
                accuracy_plus,
                score: accuracy + accuracy_plus,
                other: *other,
            }
        })
        .collect();
    let sum = |names: &[&str]| {
        subtasks
            .iter()
            .filter(|s| names.contains(&s.name.as_str()))
            .map(|s| s.score)
            .sum()
    };
    Ok(MmeScore {
        perception: sum(&PERCEPTION),
        cognition: sum(&COGNITION),
        subtasks,
    })
}

/// The ground truth of a LLaVA prompt, found as `convert_answer_to_mme.py` finds it.
fn lookup<'a>(truth: &'a GroundTruth, subtask: &str, file: &str, prompt: &str) -> Option<&'a str> {
    let mut question = prompt.to_owned();
    if question.contains(SHORT_ANSWER) {
        question = question
            .replace(SHORT_ANSWER, "")
            .trim_matches(is_py_space)
            .to_owned();
    }
    let key = |q: String| (subtask.to_owned(), file.to_owned(), q);
    if !question.contains(YES_OR_NO.trim_start()) {
        let single = format!("{question}{YES_OR_NO}");
        // Some MME files put two spaces before the instruction.
        return truth
            .get(&key(single))
            .or_else(|| truth.get(&key(format!("{question} {YES_OR_NO}"))))
            .map(String::as_str);
    }
    truth.get(&key(question)).map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_read_as_calculation_py_reads_them() {
        let cases = [
            ("Yes", Reading::Yes),
            ("No", Reading::No),
            ("yes.", Reading::Yes),
            ("No, it is not", Reading::No),
            ("Not really", Reading::No),
            ("none", Reading::No),
            ("eyes", Reading::Yes),
            ("Nope", Reading::No),
            ("Yes\n", Reading::Yes),
            (" yes", Reading::Yes),
            ("I think yes", Reading::Other),
            ("N o", Reading::Other),
        ];
        for (answer, reading) in cases {
            assert_eq!(read_answer(answer), reading, "{answer:?}");
        }
    }
}
