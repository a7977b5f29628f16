//! Answering a benchmark: every question of a shard that the answer file does not hold yet is
//! asked, and its answer line appended and flushed at once, so a run can be stopped at any
//! point and started again with the same command.

use std::path::Path;

use base64::Engine;
use image::RgbImage;
use imp::preprocess::{decode_rgb, load_rgb};
use imp::{generate, GenerationOptions, ImpModel, Prompt};

use super::answers::{AnswerFile, AnswerLine, Shard};
use super::error_at;
use super::question::{ImageRef, Question};
use crate::{Error, Result};

#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Written into every answer line; a resumed file must hold this model's answers.
    pub model_id: String,
    pub shard: Shard,
}

/// Where a run stands, reported after resuming and after each answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Questions of the shard answered, counting those found in the file.
    pub done: usize,
    /// Questions in the shard.
    pub total: usize,
    /// Questions that were already answered when the run started.
    pub resumed: usize,
}

/// Fails on the first question whose image file is missing, naming the question's line.
pub fn check_images(questions: &[Question], questions_path: &Path, images: &Path) -> Result<()> {
    for question in questions {
        if let Some(ImageRef::File(name)) = &question.image {
            let path = images.join(name);
            if !path.is_file() {
                return Err(error_at(
                    questions_path,
                    question.line,
                    format!(
                        "image {} of question_id {} not found",
                        path.display(),
                        question.id
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Answers the questions of `options.shard` that `out` lacks, with `answer(text, images)`.
pub fn run(
    questions: &[Question],
    questions_path: &Path,
    images: &Path,
    out: &Path,
    options: &RunOptions,
    answer: &mut dyn FnMut(&str, &[RgbImage]) -> Result<String>,
    progress: &mut dyn FnMut(Progress),
) -> Result<Progress> {
    let shard = &questions[options.shard.range(questions.len())];
    check_images(shard, questions_path, images)?;
    let mut file = AnswerFile::open(out, &options.model_id, &[questions_path])?;
    let todo: Vec<&Question> = shard.iter().filter(|q| !file.is_done(q)).collect();
    let mut state = Progress {
        done: shard.len() - todo.len(),
        total: shard.len(),
        resumed: shard.len() - todo.len(),
    };
    progress(state);
    for question in todo {
        let at_question = |message: String| error_at(questions_path, question.line, message);
        let pictures = match &question.image {
            None => Vec::new(),
            Some(image) => vec![load_image(image, images)
                .map_err(|e| at_question(format!("question_id {}: {e}", question.id)))?],
        };
        let text = answer(&question.text, &pictures)
            .map_err(|e| at_question(format!("question_id {}: {e}", question.id)))?;
        file.append(&AnswerLine::new(question, text, &options.model_id))?;
        state.done += 1;
        progress(state);
    }
    Ok(state)
}

fn load_image(image: &ImageRef, images: &Path) -> Result<RgbImage> {
    match image {
        ImageRef::File(name) => Ok(load_rgb(&images.join(name))?),
        ImageRef::Embedded(data) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .map_err(|e| Error::image("embedded image", format!("bad base64: {e}")))?;
            Ok(decode_rgb(&bytes, "embedded image")?)
        }
    }
}

/// The reference's way of answering: greedy decoding (`--temperature 0`, one beam) of the
/// question in the model's chat template, at most `max_new_tokens` new tokens.
pub fn model_answerer(
    model: &ImpModel,
    max_new_tokens: usize,
) -> impl FnMut(&str, &[RgbImage]) -> Result<String> + '_ {
    let options = GenerationOptions {
        max_new_tokens,
        ..Default::default()
    };
    move |text, images| {
        let prompt = Prompt::Question(text.to_owned());
        Ok(generate(model, &prompt, images, &options, &mut |_| {})?.text)
    }
}
