//! TextVQA, VQAv2 and VizWiz: open answers normalised by EvalAI's rules and scored with the
//! ten-annotator soft accuracy ([`super::answer_norm`]), as LLaVA's `eval_textvqa.py` does.
//! The test splits of VQAv2 and VizWiz are scored by their EvalAI servers; for them the
//! submission file is written as LLaVA's `convert_vqav2_for_submission.py` and
//! `convert_vizwiz_for_submission.py` do.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::answer_norm::{normalize, soft_accuracy};
use super::answers::{match_answers, AnswerLine};
use super::error_at;
use super::files::read_json;
use super::prompts::string_field;
use super::question::{Question, QuestionId};
use crate::{Error, Result};

/// Soft accuracy in percent, overall and per answer type where the annotations have types.
#[derive(Clone, Debug, Default, Serialize)]
pub struct VqaScore {
    pub questions: usize,
    pub accuracy: f64,
    pub by_answer_type: BTreeMap<String, f64>,
}

#[derive(Default)]
struct Tally {
    sum: f64,
    count: usize,
    by_type: BTreeMap<String, (f64, usize)>,
}

impl Tally {
    fn add(&mut self, score: f64, answer_type: Option<&str>) {
        self.sum += score;
        self.count += 1;
        if let Some(t) = answer_type {
            let entry = self.by_type.entry(t.to_owned()).or_default();
            entry.0 += score;
            entry.1 += 1;
        }
    }

    fn finish(self) -> VqaScore {
        let percent = |sum: f64, n: usize| if n == 0 { 0.0 } else { 100.0 * sum / n as f64 };
        VqaScore {
            questions: self.count,
            accuracy: percent(self.sum, self.count),
            by_answer_type: self
                .by_type
                .into_iter()
                .map(|(t, (sum, n))| (t, percent(sum, n)))
                .collect(),
        }
    }
}

#[derive(Deserialize)]
struct HumanAnswer {
    answer: String,
}

/// The question text `eval_textvqa.py`'s `prompt_processor` recovers from an answer's prompt,
/// lowercased.
pub fn textvqa_question(prompt: &str) -> Option<String> {
    let lines: Vec<&str> = prompt.split('\n').collect();
    let question = if prompt.starts_with("OCR tokens: ") {
        let start = prompt.find("Question: ")? + "Question: ".len();
        let end = prompt[start..].find(" Short answer:")?;
        &prompt[start..start + end]
    } else if prompt.contains("Reference OCR token: ") && lines.len() == 3 {
        if prompt.starts_with("Reference OCR token:") {
            lines[1]
        } else {
            lines[0]
        }
    } else if lines.len() == 2 {
        lines[0]
    } else {
        return None;
    };
    Some(question.to_lowercase())
}

/// TextVQA against `TextVQA_0.5.1_val.json`: LLaVA's question ids are image ids, so an answer
/// is matched by image id and question text, as in `eval_textvqa.py`.
pub fn score_textvqa(
    answers: &[AnswerLine],
    answers_path: &Path,
    annotations_path: &Path,
) -> Result<VqaScore> {
    #[derive(Deserialize)]
    struct File {
        data: Vec<Entry>,
    }
    #[derive(Deserialize)]
    struct Entry {
        image_id: String,
        question: String,
        answers: Vec<String>,
    }
    let file: File = read_json(annotations_path)?;
    let truth: HashMap<(String, String), Vec<String>> = file
        .data
        .into_iter()
        .map(|e| ((e.image_id, e.question.to_lowercase()), e.answers))
        .collect();
    let mut tally = Tally::default();
    for answer in answers {
        let question = textvqa_question(&answer.prompt).ok_or_else(|| {
            error_at(
                answers_path,
                answer.line,
                "cannot find the question in this prompt (eval_textvqa.py expects the question, \
                 an optional `Reference OCR token: ...` line and the instruction)",
            )
        })?;
        let key = (id_string(&answer.question_id), question);
        let humans = truth.get(&key).ok_or_else(|| {
            error_at(
                answers_path,
                answer.line,
                format!(
                    "image {} with question {:?} is not in {}",
                    key.0,
                    key.1,
                    annotations_path.display()
                ),
            )
        })?;
        tally.add(soft_accuracy(&answer.text, humans), None);
    }
    Ok(tally.finish())
}

/// VQAv2 against the official annotation file (`v2_mscoco_*_annotations.json`). As the VQA
/// API insists, the answers must cover exactly the annotated questions.
pub fn score_vqav2(
    answers: &[AnswerLine],
    answers_path: &Path,
    annotations_path: &Path,
) -> Result<VqaScore> {
    #[derive(Deserialize)]
    struct File {
        annotations: Vec<Entry>,
    }
    #[derive(Deserialize)]
    struct Entry {
        question_id: i64,
        answer_type: Option<String>,
        answers: Vec<HumanAnswer>,
    }
    let file: File = read_json(annotations_path)?;
    let mut truth: HashMap<i64, Entry> = file
        .annotations
        .into_iter()
        .map(|e| (e.question_id, e))
        .collect();
    let mut tally = Tally::default();
    for answer in answers {
        let entry = match &answer.question_id {
            QuestionId::Int(id) => truth.remove(id),
            QuestionId::Str(_) => None,
        }
        .ok_or_else(|| {
            error_at(
                answers_path,
                answer.line,
                format!(
                    "question_id {} is not annotated in {} (or answered twice)",
                    answer.question_id,
                    annotations_path.display()
                ),
            )
        })?;
        let humans: Vec<String> = entry.answers.into_iter().map(|a| a.answer).collect();
        tally.add(
            soft_accuracy(&answer.text, &humans),
            entry.answer_type.as_deref(),
        );
    }
    if let Some(id) = truth.keys().min() {
        return Err(Error::InvalidArgument(format!(
            "{}: {} annotated questions have no answer in {} (for example question_id {id})",
            annotations_path.display(),
            truth.len(),
            answers_path.display()
        )));
    }
    Ok(tally.finish())
}

/// VizWiz against its annotation file (`val.json`, keyed by image), through the question file
/// that maps LLaVA's question ids to images.
pub fn score_vizwiz(
    questions: &[Question],
    questions_path: &Path,
    answers: &[AnswerLine],
    answers_path: &Path,
    annotations_path: &Path,
) -> Result<VqaScore> {
    #[derive(Deserialize)]
    struct Entry {
        image: String,
        answer_type: Option<String>,
        answers: Vec<HumanAnswer>,
    }
    let entries: Vec<Entry> = read_json(annotations_path)?;
    let truth: HashMap<String, Entry> = entries.into_iter().map(|e| (e.image.clone(), e)).collect();
    let mut tally = Tally::default();
    for (question, answer) in match_answers(questions, questions_path, answers, answers_path)? {
        let image = string_field(questions_path, question.line, &question.record, "image")?;
        let entry = truth.get(image).ok_or_else(|| {
            error_at(
                questions_path,
                question.line,
                format!("image {image} is not in {}", annotations_path.display()),
            )
        })?;
        let humans: Vec<String> = entry.answers.iter().map(|a| a.answer.clone()).collect();
        tally.add(
            soft_accuracy(&answer.text, &humans),
            entry.answer_type.as_deref(),
        );
    }
    Ok(tally.finish())
}

/// The EvalAI upload for VQAv2: every question of `questions` (LLaVA uses the whole test2015
/// file, so test-dev answers leave the rest empty) with its normalised answer.
pub fn vqav2_submission(
    questions: &[Question],
    questions_path: &Path,
    answers: &[AnswerLine],
    answers_path: &Path,
) -> Result<Value> {
    let known: HashMap<&QuestionId, usize> = questions
        .iter()
        .enumerate()
        .map(|(i, q)| (&q.id, i))
        .collect();
    let mut predicted: Vec<Option<String>> = vec![None; questions.len()];
    for answer in answers {
        let i = known.get(&answer.question_id).ok_or_else(|| {
            error_at(
                answers_path,
                answer.line,
                format!(
                    "question_id {} is not in {}",
                    answer.question_id,
                    questions_path.display()
                ),
            )
        })?;
        predicted[*i] = Some(normalize(&answer.text));
    }
    Ok(Value::Array(
        questions
            .iter()
            .zip(predicted)
            .map(|(q, a)| json!({"question_id": q.id, "answer": a.unwrap_or_default()}))
            .collect(),
    ))
}

/// The EvalAI upload for VizWiz: `{image, answer}` for every question, all of which must be
/// answered.
pub fn vizwiz_submission(
    questions: &[Question],
    questions_path: &Path,
    answers: &[AnswerLine],
    answers_path: &Path,
) -> Result<Value> {
    match_answers(questions, questions_path, answers, answers_path)?
        .into_iter()
        .map(|(q, a)| {
            let image = string_field(questions_path, q.line, &q.record, "image")?;
            Ok(json!({"image": image, "answer": normalize(&a.text)}))
        })
        .collect::<Result<Vec<_>>>()
        .map(Value::Array)
}

pub(crate) fn id_string(id: &QuestionId) -> String {
    match id {
        QuestionId::Int(n) => n.to_string(),
        QuestionId::Str(s) => s.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn textvqa_prompts_as_eval_textvqa_reads_them() {
        let llava = "What is the brand of this camera?\nReference OCR token: DAKOTA, DIGITAL\n\
                     Answer the question using a single word or phrase.";
        assert_eq!(
            textvqa_question(llava).unwrap(),
            "what is the brand of this camera?"
        );
        let ocr_first = "Reference OCR token: A, B\nWhat Is It?\nAnswer briefly.";
        assert_eq!(textvqa_question(ocr_first).unwrap(), "what is it?");
        let no_ocr = "What Is It?\nAnswer the question using a single word or phrase.";
        assert_eq!(textvqa_question(no_ocr).unwrap(), "what is it?");
        let old = "OCR tokens: a b Question: Which Way? Short answer:";
        assert_eq!(textvqa_question(old).unwrap(), "which way?");
        assert_eq!(textvqa_question("just one line"), None);
    }
}
