//! GQA testdev-balanced: LLaVA's `convert_gqa_for_eval.py` turns an answer into a prediction
//! (trailing periods removed, lowercased) and the official `eval.py` counts exact matches with
//! the gold answer over the balanced questions, every one of which needs a prediction; a
//! question is "open" when its structural type is `query`, "binary" otherwise.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::answers::AnswerLine;
use super::error_at;
use super::files::read_json;
use super::vqa::id_string;
use crate::{Error, Result};

/// The prediction `convert_gqa_for_eval.py` derives from an answer.
pub fn prediction(answer: &str) -> String {
    answer.trim_end_matches('.').to_lowercase()
}

/// Accuracies in percent.
#[derive(Clone, Debug, Serialize)]
pub struct GqaScore {
    pub questions: usize,
    pub accuracy: f64,
    pub binary: f64,
    pub open: f64,
}

#[derive(Deserialize)]
struct GqaQuestion {
    answer: String,
    #[serde(rename = "isBalanced", default = "balanced")]
    is_balanced: bool,
    types: Option<Types>,
}

fn balanced() -> bool {
    true
}

#[derive(Deserialize)]
struct Types {
    structural: Option<String>,
}

/// Scores against the official questions file (`testdev_balanced_questions.json`, a map from
/// question id to question with its `answer`).
pub fn score(
    answers: &[AnswerLine],
    answers_path: &Path,
    annotations_path: &Path,
) -> Result<GqaScore> {
    let truth: HashMap<String, GqaQuestion> = read_json(annotations_path)?;
    let mut predictions: HashMap<String, String> = HashMap::new();
    for answer in answers {
        let id = id_string(&answer.question_id);
        if !truth.contains_key(&id) {
            return Err(error_at(
                answers_path,
                answer.line,
                format!(
                    "question_id {} is not in {}",
                    answer.question_id,
                    annotations_path.display()
                ),
            ));
        }
        predictions.insert(id, prediction(&answer.text));
    }
    let mut ids: Vec<&String> = truth.keys().collect();
    ids.sort();
    let (mut all, mut binary, mut open) = ((0, 0), (0, 0), (0, 0));
    for id in ids {
        let question = &truth[id];
        if !question.is_balanced {
            continue;
        }
        let predicted = predictions.get(id).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{}: question {id} has no prediction in {}; the official eval.py needs one for \
                 every balanced question",
                annotations_path.display(),
                answers_path.display()
            ))
        })?;
        let right = usize::from(*predicted == question.answer);
        let structural = question
            .types
            .as_ref()
            .and_then(|t| t.structural.as_deref());
        let kind = if structural == Some("query") {
            &mut open
        } else {
            &mut binary
        };
        *kind = (kind.0 + right, kind.1 + 1);
        all = (all.0 + right, all.1 + 1);
    }
    let percent = |(right, n): (usize, usize)| {
        if n == 0 {
            0.0
        } else {
            100.0 * right as f64 / n as f64
        }
    };
    Ok(GqaScore {
        questions: all.1,
        accuracy: percent(all),
        binary: percent(binary),
        open: percent(open),
    })
}

/// The predictions file `convert_gqa_for_eval.py` writes for the official `eval.py`.
pub fn predictions_file(answers: &[AnswerLine]) -> Value {
    Value::Array(
        answers
            .iter()
            .map(|a| json!({"questionId": a.question_id, "prediction": prediction(&a.text)}))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predictions_as_convert_gqa_for_eval() {
        // Python: text.rstrip('.').lower()
        assert_eq!(prediction("Yes."), "yes");
        assert_eq!(prediction("A.B.."), "a.b");
        assert_eq!(prediction("..."), "");
        assert_eq!(prediction(" Red. "), " red. ");
    }
}
