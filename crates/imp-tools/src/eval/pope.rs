//! POPE, scored as LLaVA's `llava/eval/eval_pope.py`: an answer is "no" when its first sentence
//! (text before the first `.`, commas removed, split on single spaces) has the word `No`, `no`
//! or `not`, and "yes" otherwise. Each label file `coco_pope_{split}.json` scores the questions
//! of that category; the tables report the F1 averaged over the splits.
//!
//! The reference pairs answers and labels by file order. Here each question is paired with the
//! label of the same image and question text, which gives the same pairs on LLaVA's files and
//! turns a mismatched POPE version into an error instead of a silent misalignment.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::answers::{match_answers, AnswerLine};
use super::error_at;
use super::files::read_jsonl;
use super::prompts::string_field;
use super::question::Question;
use crate::{Error, Result};

/// The reference's yes/no reading of an answer.
pub fn says_no(answer: &str) -> bool {
    let first_sentence = answer.split('.').next().unwrap_or_default();
    first_sentence
        .replace(',', "")
        .split(' ')
        .any(|w| matches!(w, "No" | "no" | "not"))
}

/// The metrics of one split, in percent.
#[derive(Clone, Debug, Serialize)]
pub struct SplitScore {
    pub split: String,
    pub questions: usize,
    pub tp: usize,
    pub fp: usize,
    pub tn: usize,
    #[serde(rename = "fn")]
    pub fn_: usize,
    pub accuracy: f64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub yes_ratio: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct PopeScore {
    pub splits: Vec<SplitScore>,
    pub f1_average: f64,
    pub accuracy_average: f64,
}

/// Scores `answers` to `questions` (LLaVA's `llava_pope_test.jsonl`) against label files named
/// `coco_pope_{split}.json`.
pub fn score(
    questions: &[Question],
    questions_path: &Path,
    answers: &[AnswerLine],
    answers_path: &Path,
    label_files: &[PathBuf],
) -> Result<PopeScore> {
    if label_files.is_empty() {
        return Err(Error::InvalidArgument(
            "POPE needs its label files (--annotations coco_pope_adversarial.json ...)".into(),
        ));
    }
    let pairs = match_answers(questions, questions_path, answers, answers_path)?;
    let mut splits = Vec::new();
    for label_path in label_files {
        let split = split_name(label_path)?;
        let labels = read_labels(label_path)?;
        let mut counts = [[0usize; 2]; 2]; // [label is yes][prediction is yes]
        for (question, answer) in &pairs {
            if question.record.get("category").and_then(|c| c.as_str()) != Some(split) {
                continue;
            }
            let image = string_field(questions_path, question.line, &question.record, "image")?;
            let text = question.text.split('\n').next().unwrap_or_default();
            let label = labels
                .get(&(image.to_owned(), text.to_owned()))
                .ok_or_else(|| {
                    error_at(
                        questions_path,
                        question.line,
                        format!(
                            "no label for image {image} and question {text:?} in {} (a different \
                         POPE version?)",
                            label_path.display()
                        ),
                    )
                })?;
            counts[usize::from(*label)][usize::from(!says_no(&answer.text))] += 1;
        }
        splits.push(split_score(split, counts));
    }
    let mean = |f: fn(&SplitScore) -> f64| splits.iter().map(f).sum::<f64>() / splits.len() as f64;
    Ok(PopeScore {
        f1_average: mean(|s| s.f1),
        accuracy_average: mean(|s| s.accuracy),
        splits,
    })
}

fn split_name(path: &Path) -> Result<&str> {
    path.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("coco_pope_"))
        .and_then(|n| n.strip_suffix(".json"))
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "POPE label file {} must be named coco_pope_<split>.json, as the reference \
                 derives the split from the name",
                path.display()
            ))
        })
}

/// (image, question) -> the label is "yes" (the reference treats every label but "no" as yes).
fn read_labels(path: &Path) -> Result<HashMap<(String, String), bool>> {
    let mut labels = HashMap::new();
    for (line, record) in read_jsonl(path)? {
        let Some(object) = record.as_object() else {
            return Err(error_at(path, line, "expected a JSON object"));
        };
        let image = string_field(path, line, object, "image")?.to_owned();
        let text = string_field(path, line, object, "text")?.to_owned();
        let label = string_field(path, line, object, "label")?;
        labels.insert((image, text), label != "no");
    }
    Ok(labels)
}

fn split_score(split: &str, counts: [[usize; 2]; 2]) -> SplitScore {
    let [[tn, fp], [fn_, tp]] = counts;
    let total = tp + fp + tn + fn_;
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let precision = ratio(tp, tp + fp);
    let recall = ratio(tp, tp + fn_);
    let f1 = if precision + recall == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    };
    SplitScore {
        split: split.to_owned(),
        questions: total,
        tp,
        fp,
        tn,
        fn_,
        accuracy: 100.0 * ratio(tp + tn, total),
        precision: 100.0 * precision,
        recall: 100.0 * recall,
        f1: 100.0 * f1,
        yes_ratio: 100.0 * ratio(tp + fp, total),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yes_no_parsing_follows_eval_pope() {
        // Outputs of eval_pope.py's parsing for these answers.
        let cases = [
            ("Yes", false),
            ("No", true),
            ("no", true),
            ("NO", false),
            ("No.", true),
            ("Yes, there is.", false),
            ("There is no dog.", true),
            ("There is not a dog", true),
            ("Nope", false),
            ("No, there is not.", true),
            ("Yes. No.", false),
            ("The answer is no", true),
            ("no,", true),
            ("No\nthere is", false),
            ("Not sure", false),
            ("I do not know", true),
            ("", false),
            ("Cannot tell. There is no way", false),
        ];
        for (answer, no) in cases {
            assert_eq!(says_no(answer), no, "{answer:?}");
        }
    }

    #[test]
    fn split_metrics() {
        // LLaVA-1.5-13B on the adversarial split: TP 1182, FP 117, TN 1383, FN 318.
        let s = split_score("adversarial", [[1383, 117], [318, 1182]]);
        assert!((s.accuracy - 85.5).abs() < 1e-9);
        assert!((s.precision - 90.99307159353349).abs() < 1e-9);
        assert!((s.recall - 78.8).abs() < 1e-9);
        assert!((s.f1 - 84.45873526259379).abs() < 1e-9);
        assert!((s.yes_ratio - 43.3).abs() < 1e-9);
        assert!(split_name(Path::new("pope/random.json")).is_err());
    }
}
