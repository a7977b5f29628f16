//! A multi-turn chat about images, for apps that embed the model: each question becomes a user
//! turn, each answer is kept, and the session's cache holds the conversation so far, so a
//! follow-up only computes what is new. The C and Python bindings are thin wrappers of this.

use candle_core::Tensor;
use image::RgbImage;

use crate::generate::{
    encode_images, generate_prepared, Generation, GenerationOptions, PreparedPrompt, Timings,
};
use crate::model::ImpModel;
use crate::session::{ImageId, Session};
use crate::template::{Prompt, Turn, IMAGE_MARKER};
use crate::{Error, Result};

/// One conversation with a model (which it does not hold: one model serves many of them).
pub struct Conversation {
    session: Session,
    turns: Vec<Turn>,
    /// Every image of the conversation in marker order, with its projected rows.
    images: Vec<(ImageId, Tensor)>,
}

impl Conversation {
    pub fn new(model: &ImpModel) -> Self {
        Self {
            session: model.new_session(),
            turns: Vec::new(),
            images: Vec::new(),
        }
    }

    /// The turns so far; the answers are as generated.
    pub fn turns(&self) -> &[Turn] {
        &self.turns
    }

    /// Starts a new conversation, keeping the cache's memory (and the system prompt's rows).
    pub fn clear(&mut self) {
        self.turns.clear();
        self.images.clear();
    }

    /// Asks `question` about `images` (new to this turn; earlier turns' images stay in the
    /// conversation). Without `<image>` markers in `question`, one per image is put before it,
    /// as `imp run` does. On an error or a cancellation the conversation is left as it was.
    pub fn ask(
        &mut self,
        model: &ImpModel,
        question: &str,
        images: &[RgbImage],
        options: &GenerationOptions,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation> {
        let markers = question.matches(IMAGE_MARKER).count();
        let user = if markers > 0 {
            // Checked here: the whole conversation's counts would not say which turn is wrong.
            if markers != images.len() {
                return Err(Error::Prompt(format!(
                    "the question has {markers} `{IMAGE_MARKER}` marker(s) but {} image(s) were \
                     given with it; each image needs exactly one marker",
                    images.len()
                )));
            }
            question.to_owned()
        } else {
            format!(
                "{}{question}",
                format!("{IMAGE_MARKER}\n").repeat(images.len())
            )
        };
        let known_images = self.images.len();
        self.turns.push(Turn::question(user));
        let result = self.answer(model, images, options, on_text);
        match &result {
            Ok(generation) => {
                let last = self.turns.len() - 1;
                self.turns[last].assistant = Some(generation.text.clone());
            }
            Err(_) => {
                self.turns.pop();
                self.images.truncate(known_images);
            }
        }
        result
    }

    fn answer(
        &mut self,
        model: &ImpModel,
        images: &[RgbImage],
        options: &GenerationOptions,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation> {
        let mut ids: Vec<ImageId> = self.images.iter().map(|(id, _)| *id).collect();
        ids.extend(images.iter().map(ImageId::of_image));
        // Check the prompt (markers, context length) before spending time on the images.
        let prepared = PreparedPrompt::new(model, &Prompt::Chat(self.turns.clone()), &ids)?;
        let mut timings = Timings::default();
        let rows = encode_images(model, images, &mut timings)?;
        self.images
            .extend(ids[self.images.len()..].iter().copied().zip(rows));
        let rows: Vec<Tensor> = self.images.iter().map(|(_, rows)| rows.clone()).collect();
        let mut generation =
            generate_prepared(model, &mut self.session, &prepared, &rows, options, on_text)?;
        generation.timings = timings.followed_by(&generation.timings);
        Ok(generation)
    }
}
