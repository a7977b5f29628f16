//! LLaVA's answer files: one JSON object per line with `question_id`, `prompt`, `text`,
//! `answer_id`, `model_id` and `metadata`, as `model_vqa_loader.py` writes them. Writing appends
//! and flushes each line so that a killed run loses at most the answer in progress; reopening
//! resumes after the answers already there. Shards are LLaVA's `--num-chunks` split.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use imp::files::{check_output, Overwrite};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::error_at;
use super::files::{parse_jsonl, read_text};
use super::question::{Question, QuestionId};
use crate::{Error, Result};

/// One line of an answer file. `line` is where it was read from (0 for new lines).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AnswerLine {
    pub question_id: QuestionId,
    #[serde(default)]
    pub prompt: String,
    pub text: String,
    #[serde(default)]
    pub answer_id: String,
    #[serde(default)]
    pub model_id: String,
    #[serde(default = "empty_object")]
    pub metadata: Value,
    /// Other fields, kept through merges (MMBench's `round_id`, `options`, `option_char`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
    #[serde(skip)]
    pub line: usize,
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

/// What identifies an answered question: MME asks two questions per image under one id, so the
/// prompt is part of the key.
pub type AnswerKey = (QuestionId, String);

impl AnswerLine {
    pub fn new(question: &Question, text: String, model_id: &str) -> Self {
        Self {
            question_id: question.id.clone(),
            prompt: question.prompt.clone(),
            text,
            answer_id: new_answer_id(),
            model_id: model_id.to_owned(),
            metadata: empty_object(),
            extra: question.answer_fields.clone(),
            line: 0,
        }
    }

    pub fn key(&self) -> AnswerKey {
        (self.question_id.clone(), self.prompt.clone())
    }
}

/// A random id in the style of the `shortuuid` ids LLaVA writes (22 characters, base 57).
fn new_answer_id() -> String {
    const ALPHABET: &[u8] = b"23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
    let mut rng = rand::rng();
    (0..22)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Reads an answer file. Besides LLaVA's JSON Lines it accepts the result file that
/// `eval_science_qa.py --output-result` writes (a JSON object whose `outputs` maps each question
/// id to the answer text), the form in which the LLaVA authors published their ScienceQA answers.
pub fn read_answers(path: &Path) -> Result<Vec<AnswerLine>> {
    let text = read_text(path)?;
    if let Ok(Value::Object(object)) = serde_json::from_str::<Value>(&text) {
        if let (Some(Value::Object(outputs)), None) =
            (object.get("outputs"), object.get("question_id"))
        {
            return outputs
                .iter()
                .map(|(id, text)| {
                    let text = text.as_str().ok_or_else(|| {
                        error_at(path, 1, format!("outputs[{id:?}] is not a string"))
                    })?;
                    Ok(AnswerLine {
                        question_id: QuestionId::Str(id.clone()),
                        prompt: String::new(),
                        text: text.to_owned(),
                        answer_id: String::new(),
                        model_id: String::new(),
                        metadata: empty_object(),
                        extra: Map::new(),
                        line: 1,
                    })
                })
                .collect();
        }
    }
    parse_answers(path, &text)
}

fn parse_answers(path: &Path, text: &str) -> Result<Vec<AnswerLine>> {
    parse_jsonl(path, text)?
        .into_iter()
        .map(|(line, value)| {
            let mut answer: AnswerLine = serde_json::from_value(value).map_err(|e| {
                error_at(
                    path,
                    line,
                    format!("not an answer line (needs question_id and text): {e}"),
                )
            })?;
            answer.line = line;
            Ok(answer)
        })
        .collect()
}

/// An answer file open for appending, knowing which questions it already answers.
pub struct AnswerFile {
    path: PathBuf,
    file: File,
    done: HashSet<AnswerKey>,
}

impl AnswerFile {
    /// Opens (or creates) `path`. Answers already there are kept; they must come from
    /// `model_id`, so that two models' answers never mix. An unfinished last line (a run
    /// killed mid-write) is cut off and its question answered again.
    pub fn open(path: &Path, model_id: &str, inputs: &[&Path]) -> Result<Self> {
        // An existing file is resumed, never replaced; it must still be a regular file and
        // none of the run's inputs.
        check_output(path, inputs, Overwrite::Replace)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let mut done = HashSet::new();
        if path.exists() {
            let mut text = read_text(path)?;
            if !text.is_empty() && !text.ends_with('\n') {
                let keep = text.rfind('\n').map_or(0, |i| i + 1);
                tracing::warn!(
                    "{}: dropping an unfinished last line; its question is answered again",
                    path.display()
                );
                text.truncate(keep);
                let file = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|e| Error::io(path, e))?;
                file.set_len(keep as u64).map_err(|e| Error::io(path, e))?;
            }
            for answer in parse_answers(path, &text)? {
                if answer.model_id != model_id {
                    return Err(error_at(
                        path,
                        answer.line,
                        format!(
                            "this file holds answers of model `{}`, not `{model_id}`; resume with \
                             the same model or write to another file",
                            answer.model_id
                        ),
                    ));
                }
                done.insert(answer.key());
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            done,
        })
    }

    pub fn is_done(&self, question: &Question) -> bool {
        self.done
            .contains(&(question.id.clone(), question.prompt.clone()))
    }

    /// Appends one line and hands it to the OS at once.
    pub fn append(&mut self, answer: &AnswerLine) -> Result<()> {
        let mut line = serde_json::to_string(answer).expect("answer lines serialise");
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.flush())
            .map_err(|e| Error::io(&self.path, e))?;
        self.done.insert(answer.key());
        Ok(())
    }
}

/// Part `index` of `count` of a question list, split as LLaVA's `get_chunk` does: contiguous
/// chunks of ceil(len / count) questions, so shard answers concatenate in question order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// 0-based, like LLaVA's `--chunk-idx`.
    pub index: usize,
    pub count: usize,
}

impl Default for Shard {
    fn default() -> Self {
        Self { index: 0, count: 1 }
    }
}

impl Shard {
    pub fn range(self, len: usize) -> Range<usize> {
        let chunk = len.div_ceil(self.count);
        let start = (self.index * chunk).min(len);
        start..(start + chunk).min(len)
    }
}

impl FromStr for Shard {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::InvalidArgument(format!(
                "shard `{s}`: expected I/N with 0 <= I < N, e.g. 0/4 for the first of four"
            ))
        };
        let (index, count) = s.split_once('/').ok_or_else(bad)?;
        let index: usize = index.trim().parse().map_err(|_| bad())?;
        let count: usize = count.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Self { index, count })
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// Concatenates shard answer files into `out` (as LLaVA's scripts `cat` them), refusing
/// malformed lines and questions answered twice. Returns the number of answers written.
pub fn merge(inputs: &[PathBuf], out: &Path, overwrite: Overwrite) -> Result<usize> {
    let read: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
    check_output(out, &read, overwrite)?;
    if inputs.iter().any(|p| p == out) {
        return Err(Error::InvalidArgument(format!(
            "the merge output {} is also an input",
            out.display()
        )));
    }
    let mut seen: HashMap<AnswerKey, (&Path, usize)> = HashMap::new();
    let mut text = String::new();
    for input in inputs {
        for answer in parse_answers(input, &read_text(input)?)? {
            if let Some((first, line)) = seen.insert(answer.key(), (input, answer.line)) {
                return Err(error_at(
                    input,
                    answer.line,
                    format!(
                        "question_id {} with this prompt is already answered at {}:{line}",
                        answer.question_id,
                        first.display()
                    ),
                ));
            }
            text.push_str(&serde_json::to_string(&answer).expect("answer lines serialise"));
            text.push('\n');
        }
    }
    imp::files::write(out, text.as_bytes(), overwrite)?;
    Ok(seen.len())
}

/// Pairs every question with its answer, in question order. An answer is found by id and
/// prompt, or by id alone where the id is unique (answer files of other tools may record the
/// prompt differently). Answers to unknown questions, double answers and unanswered questions
/// are errors naming the line.
pub fn match_answers<'a>(
    questions: &'a [Question],
    questions_path: &Path,
    answers: &'a [AnswerLine],
    answers_path: &Path,
) -> Result<Vec<(&'a Question, &'a AnswerLine)>> {
    let mut by_key: HashMap<(&QuestionId, &str), usize> = HashMap::new();
    let mut by_id: HashMap<&QuestionId, Vec<usize>> = HashMap::new();
    for (i, q) in questions.iter().enumerate() {
        by_key.insert((&q.id, q.prompt.as_str()), i);
        by_id.entry(&q.id).or_default().push(i);
    }
    let mut matched: Vec<Option<&AnswerLine>> = vec![None; questions.len()];
    for answer in answers {
        let index = match by_key.get(&(&answer.question_id, answer.prompt.as_str())) {
            Some(&i) => i,
            None => match by_id.get(&answer.question_id).map(Vec::as_slice) {
                Some(&[i]) => i,
                Some(_) => {
                    return Err(error_at(
                        answers_path,
                        answer.line,
                        format!(
                            "question_id {} has several questions in {} and this prompt matches \
                             none of them",
                            answer.question_id,
                            questions_path.display()
                        ),
                    ))
                }
                None => {
                    return Err(error_at(
                        answers_path,
                        answer.line,
                        format!(
                            "question_id {} is not in {}",
                            answer.question_id,
                            questions_path.display()
                        ),
                    ))
                }
            },
        };
        if let Some(first) = matched[index].replace(answer) {
            return Err(error_at(
                answers_path,
                answer.line,
                format!(
                    "question_id {} is answered twice (first at line {})",
                    answer.question_id, first.line
                ),
            ));
        }
    }
    let missing: Vec<usize> = (0..questions.len())
        .filter(|&i| matched[i].is_none())
        .collect();
    if let Some(&first) = missing.first() {
        return Err(error_at(
            questions_path,
            questions[first].line,
            format!(
                "question_id {} has no answer in {} ({} of {} questions unanswered); finish the \
                 run (`imp eval run` resumes) or merge all shards",
                questions[first].id,
                answers_path.display(),
                missing.len(),
                questions.len()
            ),
        ));
    }
    Ok(questions
        .iter()
        .zip(matched)
        .map(|(q, a)| (q, a.expect("every question matched")))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_split_like_llava_get_chunk() {
        // split_list(range(10), 4): chunk size ceil(10/4) = 3 -> [0..3], [3..6], [6..9], [9..10].
        let ranges: Vec<_> = (0..4)
            .map(|index| Shard { index, count: 4 }.range(10))
            .collect();
        assert_eq!(ranges, vec![0..3, 3..6, 6..9, 9..10]);
        // More shards than questions: the tail shards are empty.
        assert_eq!(Shard { index: 3, count: 4 }.range(2), 2..2);
        assert_eq!(
            "1/3".parse::<Shard>().unwrap(),
            Shard { index: 1, count: 3 }
        );
        for bad in ["3/3", "1", "a/2", "0/0", "-1/2"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }

    #[test]
    fn answer_lines_keep_llava_fields() {
        let line = r#"{"question_id": 7, "round_id": 1, "prompt": "p", "text": "Yes", "answer_id": "x", "model_id": "m", "metadata": {}}"#;
        let answers = parse_answers(Path::new("a.jsonl"), line).unwrap();
        assert_eq!(answers[0].question_id, QuestionId::Int(7));
        assert_eq!(answers[0].extra["round_id"], 1);
        let back = serde_json::to_string(&answers[0]).unwrap();
        assert!(
            back.contains("\"round_id\":1") && !back.contains("line"),
            "{back}"
        );
        let err = parse_answers(Path::new("a.jsonl"), "{\"question_id\": 1}\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("a.jsonl:1: not an answer line"), "{err}");
        assert_eq!(new_answer_id().len(), 22);
    }
}
