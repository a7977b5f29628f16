//! ScienceQA, scored as LLaVA's `llava/eval/eval_science_qa.py`: the answer must be an option
//! letter on its own (`B`), start with one followed by `. ` (`B. apostrophe`), or contain
//! exactly one `The answer is X` followed by one more character; a letter beyond the
//! question's options, or anything else, is a wrong answer. The tables report the accuracy on
//! the questions that have an image (SQA-IMG).
//!
//! The ground truth is the question file itself (`llava_test_CQM-A.json`: the options in the
//! first turn, the letter in the second), which holds the same test split as ScienceQA's
//! `problems.json`. The reference marks a question multimodal when the answer's prompt has
//! `<image>`, which `model_vqa_science.py` writes exactly for the questions with an image; the
//! question's `image` field is used here, so answer files without prompts score the same.

use std::path::Path;

use serde::Serialize;

use super::answers::{match_answers, AnswerLine};
use super::error_at;
use super::question::Question;
use crate::Result;

const LETTERS: [char; 5] = ['A', 'B', 'C', 'D', 'E'];
const ANSWER_IS: &str = "The answer is ";

/// The option index the reference reads from `answer`, given the question's number of options.
pub fn parse_choice(answer: &str, choices: usize) -> Option<usize> {
    let chars: Vec<char> = answer.chars().collect();
    let letter = match chars.as_slice() {
        [c] if LETTERS.contains(c) => Some(*c),
        [c, '.', ' ', ..] if LETTERS.contains(c) => Some(*c),
        _ => answer_is_letter(answer),
    }?;
    LETTERS[..choices.min(LETTERS.len())]
        .iter()
        .position(|&l| l == letter)
}

/// `re.findall(r'The answer is ([A-Z]).', text)` when it finds exactly one match.
fn answer_is_letter(text: &str) -> Option<char> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(ANSWER_IS) {
        let after = &rest[at + ANSWER_IS.len()..];
        let mut tail = after.chars();
        match (tail.next(), tail.next()) {
            (Some(letter), Some(next)) if letter.is_ascii_uppercase() && next != '\n' => {
                found.push(letter);
                rest = tail.as_str();
            }
            // No match here: the search goes on from the next character.
            _ => rest = &rest[at + 1..],
        }
    }
    match found.as_slice() {
        [letter] => Some(*letter),
        _ => None,
    }
}

/// How many options (`A. `, `B. `, ...) end the question text; options may span lines.
pub fn count_choices(question: &str) -> usize {
    let Some(mut at) = question
        .rfind("\nA. ")
        .or_else(|| question.starts_with("A. ").then_some(0))
    else {
        return 0;
    };
    let mut count = 1;
    for letter in &LETTERS[1..] {
        match question[at..].find(&format!("\n{letter}. ")) {
            Some(next) => {
                at += next + 1;
                count += 1;
            }
            None => break,
        }
    }
    count
}

/// Accuracies in percent.
#[derive(Clone, Debug, Serialize)]
pub struct ScienceQaScore {
    pub questions: usize,
    pub correct: usize,
    pub accuracy: f64,
    pub image_questions: usize,
    pub image_correct: usize,
    pub image_accuracy: f64,
    /// Answers the reference cannot read as an option (scored wrong).
    pub unparsed: usize,
}

pub fn score(
    questions: &[Question],
    questions_path: &Path,
    answers: &[AnswerLine],
    answers_path: &Path,
) -> Result<ScienceQaScore> {
    let pairs = match_answers(questions, questions_path, answers, answers_path)?;
    let (mut correct, mut image_questions, mut image_correct, mut unparsed) = (0, 0, 0, 0);
    for (question, answer) in &pairs {
        let turn = |i: usize| {
            question
                .record
                .get("conversations")
                .and_then(|c| c.get(i))
                .and_then(|t| t.get("value"))
                .and_then(|v| v.as_str())
                .ok_or_else(|| {
                    error_at(
                        questions_path,
                        question.line,
                        format!("missing conversations[{i}].value"),
                    )
                })
        };
        let choices = count_choices(turn(0)?);
        let truth = turn(1)?;
        let truth = LETTERS[..choices]
            .iter()
            .position(|l| truth.len() == 1 && truth.starts_with(*l))
            .ok_or_else(|| {
                error_at(
                    questions_path,
                    question.line,
                    format!("the answer {truth:?} is not one of the {choices} option letters"),
                )
            })?;
        let predicted = parse_choice(&answer.text, choices);
        unparsed += usize::from(predicted.is_none());
        let right = predicted == Some(truth);
        correct += usize::from(right);
        if question.image.is_some() {
            image_questions += 1;
            image_correct += usize::from(right);
        }
    }
    let percent = |a: usize, b: usize| {
        if b == 0 {
            0.0
        } else {
            100.0 * a as f64 / b as f64
        }
    };
    Ok(ScienceQaScore {
        questions: pairs.len(),
        correct,
        accuracy: percent(correct, pairs.len()),
        image_questions,
        image_correct,
        image_accuracy: percent(image_correct, image_questions),
        unparsed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_parsing_follows_eval_science_qa() {
        // (answer, number of options, index eval_science_qa.py derives; None for its -1).
        let cases = [
            ("A", 2, Some(0)),
            ("B", 2, Some(1)),
            ("C", 2, None),
            ("E", 5, Some(4)),
            ("a", 2, None),
            (" A", 2, None),
            ("A.", 2, None),
            ("A\n", 2, None),
            ("AB", 2, None),
            ("", 2, None),
            ("A. dog", 2, Some(0)),
            ("A.dog", 2, None),
            ("B. x\nmore", 2, Some(1)),
            ("The answer is B.", 3, Some(1)),
            // The pattern's last `.` is any character but a newline.
            ("The answer is BC", 3, Some(1)),
            ("The answer is B", 3, None),
            ("The answer is B\n", 3, None),
            ("the answer is B.", 3, None),
            ("The answer is  B.", 3, None),
            ("The answer is B. The answer is C.", 3, None),
            ("I think The answer is C!", 3, Some(2)),
            ("The answer is F.", 5, None),
            ("The answer is TThe answer is B.", 3, None),
        ];
        for (answer, choices, expected) in cases {
            assert_eq!(parse_choice(answer, choices), expected, "{answer:?}");
        }
    }

    #[test]
    fn choices_are_counted_from_the_trailing_options() {
        let q =
            "Context: A. not an option\nWhich closing is correct?\nA. See you soon,\nJanet\nB. \
                 See You Soon,\nJanet";
        assert_eq!(count_choices(q), 2);
        assert_eq!(count_choices("Q?\nA. x\nB. y\nC. z\nD. w\nE. v"), 5);
        assert_eq!(count_choices("A. x\nB. y"), 2);
        assert_eq!(count_choices("no options"), 0);
    }
}
