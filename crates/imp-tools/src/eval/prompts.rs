//! Question files and prompts, as the reference scripts build them (LLaVA-1.5's
//! `scripts/v1_5/eval/*.sh`, which Imp's docs/Evaluation.md follows):
//!
//! - POPE, TextVQA, VQAv2, VizWiz, GQA, MME, MM-Vet (`model_vqa_loader.py` / `model_vqa.py`):
//!   a JSON Lines file of `{question_id, image, text}`; the prompt is `text` unchanged (LLaVA's
//!   files already carry the short-answer instruction and, for TextVQA, the OCR tokens).
//! - ScienceQA (`model_vqa_science.py --single-pred-prompt`): `llava_test_CQM-A.json`, a JSON
//!   array of conversations; the prompt is the first human turn (context, question and
//!   `A. ...` options) without its `<image>` marker, plus [`OPTION_LETTER_PROMPT`]. Questions
//!   without a picture are asked without an image.
//! - MMBench (`model_vqa_mmbench.py --single-pred-prompt`): the benchmark's TSV; the prompt is
//!   the hint (when present), the question and the options `A. ...`, plus the same instruction;
//!   images are embedded as base64.

use std::path::Path;

use serde_json::{Map, Value};

use super::files::{read_json_array, read_jsonl, read_tsv};
use super::question::{ImageRef, Question, QuestionId};
use super::{error_at, Benchmark};
use crate::Result;

/// LLaVA's `--single-pred-prompt` instruction.
pub const OPTION_LETTER_PROMPT: &str =
    "Answer with the option's letter from the given choices directly.";

/// The option letters MMBench uses (`all_options` in `model_vqa_mmbench.py`).
pub const MMBENCH_LETTERS: [&str; 4] = ["A", "B", "C", "D"];

/// Reads `path` in the format of `benchmark`'s reference question file.
pub fn load_questions(benchmark: Benchmark, path: &Path) -> Result<Vec<Question>> {
    match benchmark {
        Benchmark::ScienceQa => load_scienceqa(path),
        Benchmark::MmBench => load_mmbench(path),
        _ => load_llava_jsonl(path),
    }
}

fn load_llava_jsonl(path: &Path) -> Result<Vec<Question>> {
    read_jsonl(path)?
        .into_iter()
        .map(|(line, value)| {
            let Value::Object(record) = value else {
                return Err(error_at(path, line, "expected a JSON object"));
            };
            let id = question_id(path, line, &record, "question_id")?;
            let text = string_field(path, line, &record, "text")?.to_owned();
            let image = string_field(path, line, &record, "image")?.to_owned();
            Ok(Question {
                id,
                line,
                prompt: text.clone(),
                text,
                image: Some(ImageRef::File(image)),
                record,
                answer_fields: Map::new(),
            })
        })
        .collect()
}

fn load_scienceqa(path: &Path) -> Result<Vec<Question>> {
    read_json_array(path)?
        .into_iter()
        .map(|(line, value)| {
            let Value::Object(record) = value else {
                return Err(error_at(path, line, "expected a JSON object"));
            };
            let id = question_id(path, line, &record, "id")?;
            let human = record
                .get("conversations")
                .and_then(|c| c.get(0))
                .and_then(|turn| turn.get("value"))
                .and_then(Value::as_str)
                .ok_or_else(|| error_at(path, line, "missing conversations[0].value"))?;
            let question = human.replace("<image>", "").trim().to_owned();
            let image = match record.get("image") {
                None => None,
                Some(Value::String(file)) => Some(ImageRef::File(file.clone())),
                Some(_) => return Err(error_at(path, line, "`image` is not a string")),
            };
            let text = format!("{question}\n{OPTION_LETTER_PROMPT}");
            let prompt = if image.is_some() {
                format!("<image>\n{text}")
            } else {
                text.clone()
            };
            Ok(Question {
                id,
                line,
                prompt,
                text,
                image,
                record,
                answer_fields: Map::new(),
            })
        })
        .collect()
}

fn load_mmbench(path: &Path) -> Result<Vec<Question>> {
    let table = read_tsv(path)?;
    let column = |name: &str| {
        table
            .column(name)
            .ok_or_else(|| error_at(path, 1, format!("the table has no `{name}` column")))
    };
    let (index, question, image) = (column("index")?, column("question")?, column("image")?);
    let hint = table.column("hint");
    let letters: Vec<usize> = MMBENCH_LETTERS
        .iter()
        .map_while(|l| table.column(l))
        .collect();
    table
        .rows
        .iter()
        .map(|(line, row)| {
            let id = row[index].trim().parse::<i64>().map_err(|_| {
                error_at(
                    path,
                    *line,
                    format!("index `{}` is not an integer", row[index]),
                )
            })?;
            // get_options: the options up to the first missing one.
            let options: Vec<&str> = letters
                .iter()
                .map(|&c| row[c].as_str())
                .take_while(|o| !is_pandas_none(o))
                .collect();
            let mut text = row[question].clone();
            if let Some(h) = hint.map(|h| row[h].as_str()).filter(|h| !is_pandas_none(h)) {
                text = format!("{h}\n{text}");
            }
            for (letter, option) in MMBENCH_LETTERS.iter().zip(&options) {
                text.push_str(&format!("\n{letter}. {option}"));
            }
            let record: Map<String, Value> = table
                .header
                .iter()
                .zip(row)
                .filter(|(name, _)| *name != "image")
                .map(|(name, value)| (name.clone(), Value::String(value.clone())))
                .collect();
            let mut answer_fields = Map::new();
            answer_fields.insert("round_id".into(), 0.into());
            answer_fields.insert("options".into(), options.clone().into());
            answer_fields.insert(
                "option_char".into(),
                MMBENCH_LETTERS[..options.len()].to_vec().into(),
            );
            Ok(Question {
                id: QuestionId::Int(id),
                line: *line,
                text: format!("{text}\n{OPTION_LETTER_PROMPT}"),
                prompt: text,
                image: Some(ImageRef::Embedded(row[image].clone())),
                record,
                answer_fields,
            })
        })
        .collect()
}

/// `is_none` of `model_vqa_mmbench.py` applied to what pandas reads: its default NA strings
/// become NaN, and the script also treats "nan" / "none" in any case as missing.
pub fn is_pandas_none(value: &str) -> bool {
    const PANDAS_NA: [&str; 19] = [
        "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
        "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
    ];
    PANDAS_NA.contains(&value)
        || value.eq_ignore_ascii_case("nan")
        || value.eq_ignore_ascii_case("none")
}

fn question_id(
    path: &Path,
    line: usize,
    record: &Map<String, Value>,
    field: &str,
) -> Result<QuestionId> {
    let id = match record.get(field) {
        Some(Value::String(s)) => Some(QuestionId::Str(s.clone())),
        Some(Value::Number(n)) => n.as_i64().map(QuestionId::Int),
        _ => None,
    };
    id.ok_or_else(|| {
        error_at(
            path,
            line,
            format!("missing `{field}` (an integer or a string)"),
        )
    })
}

pub(crate) fn string_field<'a>(
    path: &Path,
    line: usize,
    record: &'a Map<String, Value>,
    field: &str,
) -> Result<&'a str> {
    record
        .get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| error_at(path, line, format!("missing string field `{field}`")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pandas_missing_values() {
        for none in ["", "nan", "NaN", "NONE", "None", "NA", "null"] {
            assert!(is_pandas_none(none), "{none:?}");
        }
        for value in ["0", "no", "Nonetheless", " "] {
            assert!(!is_pandas_none(value), "{value:?}");
        }
    }
}
