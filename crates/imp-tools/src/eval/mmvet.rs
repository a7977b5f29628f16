//! MM-Vet is graded by a GPT-4 judge (the benchmark's official grader), which is out of scope
//! here; this writes the grader's input as LLaVA's `convert_mmvet_for_eval.py` does: a JSON
//! object from `v1_{question_id}` to the answer text, in answer order.

use super::answers::AnswerLine;
use super::vqa::id_string;

pub fn grader_input(answers: &[AnswerLine]) -> String {
    if answers.is_empty() {
        return "{}".to_owned();
    }
    let entries: Vec<String> = answers
        .iter()
        .map(|a| {
            let key = format!("v1_{}", id_string(&a.question_id));
            format!(
                "  {}: {}",
                serde_json::Value::from(key),
                serde_json::Value::from(a.text.as_str())
            )
        })
        .collect();
    format!("{{\n{}\n}}", entries.join(",\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::question::QuestionId;

    #[test]
    fn grader_input_keys_and_order() {
        let answer = |id: i64, text: &str| AnswerLine {
            question_id: QuestionId::Int(id),
            prompt: String::new(),
            text: text.to_owned(),
            answer_id: String::new(),
            model_id: String::new(),
            metadata: serde_json::json!({}),
            extra: Default::default(),
            line: 0,
        };
        let text = grader_input(&[answer(10, "x = \"3\""), answer(2, "two\nlines")]);
        assert_eq!(
            text,
            "{\n  \"v1_10\": \"x = \\\"3\\\"\",\n  \"v1_2\": \"two\\nlines\"\n}"
        );
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed["v1_2"], "two\nlines");
        assert_eq!(grader_input(&[]), "{}");
    }
}
