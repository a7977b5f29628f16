//! Answering a prompt: images through the vision path, the spliced prefill, then token-by-token
//! decoding with the sampler, stop ids and stop strings, text streamed as it becomes final.
//!
//! A session keeps what it has computed: when a prompt extends what the session already holds
//! (the next turn of a conversation about the same image), only the new part is prefilled.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::Tensor;
use image::RgbImage;

use crate::constraint::{Grammar, Guide};
use crate::model::ImpModel;
use crate::sampler::{logprob, top_logprobs, Sampler, SamplingParams};
use crate::session::{ImageId, Position, Session};
use crate::template::Prompt;
use crate::{Error, Result};

#[derive(Debug, Clone)]
pub struct GenerationOptions {
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation ends before the first occurrence of any of these in the text.
    pub stop_strings: Vec<String>,
    /// Alternatives reported per generated token (0 = none).
    pub top_logprobs: usize,
    /// Checked before every token: once set (by another thread), generation ends with
    /// [`Error::Cancelled`].
    pub cancel: Option<Arc<AtomicBool>>,
    /// Generate exactly `max_new_tokens`, passing stop tokens (for benchmarks, like llama.cpp's
    /// `--ignore-eos`); a grammar's end still ends the answer.
    pub ignore_stop_tokens: bool,
    /// The answer must match this ([`ImpModel::compile_constraint`]).
    pub grammar: Option<Grammar>,
}

impl Default for GenerationOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 512,
            sampling: SamplingParams::default(),
            stop_strings: Vec::new(),
            top_logprobs: 0,
            cancel: None,
            ignore_stop_tokens: false,
            grammar: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token or stop string.
    Stop,
    /// `max_new_tokens` or the model's context limit.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
        }
    }
}

/// Wall time per stage of one request.
#[derive(Debug, Clone, Default)]
pub struct Timings {
    pub preprocess: Duration,
    pub vision: Duration,
    pub projector: Duration,
    pub prefill: Duration,
    pub decode: Duration,
    /// Tokens produced by the decode loop (the first comes from the prefill).
    pub decode_steps: usize,
}

impl Timings {
    /// From the start of image preprocessing to the first generated token's logits.
    pub fn time_to_first_token(&self) -> Duration {
        self.preprocess + self.vision + self.projector + self.prefill
    }

    /// These image stages' times with `generation`'s prefill and decode.
    pub(crate) fn followed_by(self, generation: &Timings) -> Timings {
        Timings {
            prefill: generation.prefill,
            decode: generation.decode,
            decode_steps: generation.decode_steps,
            ..self
        }
    }

    pub fn decode_tokens_per_second(&self) -> f64 {
        if self.decode.is_zero() {
            0.0
        } else {
            self.decode_steps as f64 / self.decode.as_secs_f64()
        }
    }
}

#[derive(Debug, Clone)]
pub struct Generation {
    /// The answer, special tokens skipped, trimmed as the reference does.
    pub text: String,
    /// Generated ids, without the stop token.
    pub tokens: Vec<u32>,
    /// Length of the spliced prompt: text tokens plus image rows minus the markers.
    pub prompt_tokens: usize,
    pub image_tokens: usize,
    /// Leading prompt positions the session already held and that were not computed again.
    pub reused_tokens: usize,
    /// Per generated token: the most likely ids with their log-probabilities.
    pub top_logprobs: Vec<Vec<(u32, f32)>>,
    /// Per generated token, when `top_logprobs > 0`: its own log-probability.
    pub logprobs: Vec<f32>,
    pub finish_reason: FinishReason,
    pub timings: Timings,
}

/// Answers `prompt` about `images` in a fresh session.
pub fn generate(
    model: &ImpModel,
    prompt: &Prompt,
    images: &[RgbImage],
    options: &GenerationOptions,
    on_text: &mut dyn FnMut(&str),
) -> Result<Generation> {
    let mut session = model.new_session();
    generate_in(model, &mut session, prompt, images, options, on_text)
}

/// Like [`generate`], in a caller's session; whatever prefix of this prompt the session already
/// holds is reused.
pub fn generate_in(
    model: &ImpModel,
    session: &mut Session,
    prompt: &Prompt,
    images: &[RgbImage],
    options: &GenerationOptions,
    on_text: &mut dyn FnMut(&str),
) -> Result<Generation> {
    let ids: Vec<ImageId> = images.iter().map(ImageId::of_image).collect();
    // Check the prompt before spending time on the images.
    let prepared = PreparedPrompt::new(model, prompt, &ids)?;
    let mut timings = Timings::default();
    let rows = encode_images(model, images, &mut timings)?;
    let mut generation = generate_prepared(model, session, &prepared, &rows, options, on_text)?;
    generation.timings = timings.followed_by(&generation.timings);
    Ok(generation)
}

/// Each image's projected rows ([`ImpModel::embed_image`]), adding the time of each stage to
/// `timings`.
pub fn encode_images(
    model: &ImpModel,
    images: &[RgbImage],
    timings: &mut Timings,
) -> Result<Vec<Tensor>> {
    let mut rows = Vec::with_capacity(images.len());
    for image in images {
        let start = Instant::now();
        let pixels = model.preprocessor().preprocess(image, model.device())?;
        timings.preprocess += start.elapsed();
        let start = Instant::now();
        let features = model.vision_features(&pixels)?;
        timings.vision += start.elapsed();
        let start = Instant::now();
        rows.push(model.project(&features)?);
        timings.projector += start.elapsed();
    }
    Ok(rows)
}

/// A prompt rendered, tokenized and checked against its image count and the context limit, with
/// what each spliced position holds: all that can be known before the images are encoded.
#[derive(Debug, Clone)]
pub struct PreparedPrompt {
    ids: Vec<u32>,
    positions: Vec<Position>,
    images: usize,
}

impl PreparedPrompt {
    /// `images` names the images in marker order (see [`ImageId`]).
    pub fn new(model: &ImpModel, prompt: &Prompt, images: &[ImageId]) -> Result<Self> {
        let text = prompt.render(model.config().decoder.family, images.len());
        let ids = model.tokenize_prompt(&text)?;
        if ids.is_empty() {
            return Err(Error::Prompt("the prompt is empty".into()));
        }
        let image_tokens = model.image_tokens();
        let len = ids.len() + (image_tokens * images.len()) - images.len();
        let limit = model.config().max_context;
        if len > limit {
            return Err(Error::ContextOverflow { needed: len, limit });
        }
        let image_token_id = model.image_token_id();
        let markers = ids.iter().filter(|&&id| id == image_token_id).count();
        if markers != images.len() {
            return Err(Error::Prompt(format!(
                "the prompt has {markers} `<image>` marker(s) but {} image(s) were given; each \
                 image needs exactly one marker",
                images.len()
            )));
        }
        let mut positions = Vec::with_capacity(len);
        let mut next_image = images.iter();
        for &id in &ids {
            if id != image_token_id {
                positions.push(Position::Token(id));
            } else if let Some(&image) = next_image.next() {
                positions
                    .extend((0..image_tokens as u32).map(|row| Position::ImageRow(image, row)));
            }
        }
        Ok(Self {
            ids,
            positions,
            images: images.len(),
        })
    }

    /// What each position of the spliced prompt holds.
    pub fn positions(&self) -> &[Position] {
        &self.positions
    }

    /// Spliced length: text tokens plus image rows minus the markers.
    pub fn len(&self) -> usize {
        self.positions.len()
    }

    /// Never true: an empty prompt is an error.
    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }
}

/// Answers a prepared prompt given its images' projected rows ([`ImpModel::embed_image`]), in a
/// session whose prefix shared with the prompt is reused rather than computed again.
pub fn generate_prepared(
    model: &ImpModel,
    session: &mut Session,
    prepared: &PreparedPrompt,
    images: &[Tensor],
    options: &GenerationOptions,
    on_text: &mut dyn FnMut(&str),
) -> Result<Generation> {
    let mut sampler = Sampler::new(options.sampling.clone())?;
    let cancelled = || {
        options
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
    };
    let mut timings = Timings::default();
    let prompt_tokens = prepared.len();
    let max_new_tokens = options
        .max_new_tokens
        .min(model.config().max_context - prompt_tokens);

    let start = Instant::now();
    // Its first mask is computed while the prompt is prefilled.
    let mut guide = options.grammar.as_ref().map(Guide::start).transpose()?;
    let embeds = model.splice(&prepared.ids, images)?;
    // Positions fed without being recorded cannot be reused; the last prompt position is always
    // fed again because its logits give the first token.
    session.truncate(session.positions().len());
    let reused_tokens = session
        .common_prefix(&prepared.positions)
        .min(prompt_tokens - 1);
    session.truncate(reused_tokens);
    session.reserve(prompt_tokens + max_new_tokens)?;
    if cancelled() {
        return Err(Error::Cancelled);
    }
    let embeds = embeds.narrow(0, reused_tokens, prompt_tokens - reused_tokens)?;
    let hidden = model.decoder().forward(&embeds, session)?;
    session.record(&prepared.positions[reused_tokens..]);
    let mut logits = model.decoder().last_logits(&hidden)?;
    timings.prefill = start.elapsed();

    let mut history = prepared.ids.clone();
    let mut tokens = Vec::new();
    let mut top = Vec::new();
    let mut logprobs = Vec::new();
    let mut stream = TextStream::new(&options.stop_strings);
    let mut finish_reason = FinishReason::Length;
    let decode_start = Instant::now();
    while tokens.len() < max_new_tokens {
        if cancelled() {
            return Err(Error::Cancelled);
        }
        if let Some(guide) = &mut guide {
            guide.next_mask()?.apply(&mut logits);
        }
        let token = sampler.sample(&logits, &history);
        let stops_here = !options.ignore_stop_tokens || guide.is_some();
        if stops_here && model.stop_token_ids().contains(&token) {
            finish_reason = FinishReason::Stop;
            break;
        }
        tokens.push(token);
        history.push(token);
        if options.top_logprobs > 0 {
            top.push(top_logprobs(&logits, options.top_logprobs));
            logprobs.push(logprob(&logits, token));
        }
        let decoded = model.tokenizer().decode(&tokens, true)?;
        if stream.push(&decoded, on_text) {
            finish_reason = FinishReason::Stop;
            break;
        }
        if tokens.len() == max_new_tokens {
            break;
        }
        // The next mask is computed while the decoder runs.
        if let Some(guide) = &mut guide {
            guide.advance(token);
        }
        let hidden = model
            .decoder()
            .forward(&model.decoder().embed(&[token])?, session)?;
        session.record(&[Position::Token(token)]);
        logits = model.decoder().last_logits(&hidden)?;
        timings.decode_steps += 1;
    }
    timings.decode = decode_start.elapsed();
    let text = stream.finish(on_text);
    // A stop asked for while the last pieces were handed out still counts: the caller has not
    // seen (and may not want) an answer it asked to cut short.
    if cancelled() {
        return Err(Error::Cancelled);
    }
    Ok(Generation {
        text,
        tokens,
        prompt_tokens,
        image_tokens: model.image_tokens() * prepared.images,
        reused_tokens,
        top_logprobs: top,
        logprobs,
        finish_reason,
        timings,
    })
}

/// Turns the growing decoded text into stream pieces that are final: never half a UTF-8
/// character, never the start of what may become a stop string, no leading whitespace.
struct TextStream<'a> {
    stop_strings: &'a [String],
    text: String,
    emitted: usize,
}

impl<'a> TextStream<'a> {
    fn new(stop_strings: &'a [String]) -> Self {
        Self {
            stop_strings,
            text: String::new(),
            emitted: 0,
        }
    }

    /// Takes the full decoded text so far; returns true when a stop string was reached.
    fn push(&mut self, decoded: &str, on_text: &mut dyn FnMut(&str)) -> bool {
        self.text = decoded.trim_start().to_owned();
        let stop_at = self
            .stop_strings
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| self.text.find(s.as_str()))
            .min();
        if let Some(at) = stop_at {
            self.text.truncate(at);
            self.emit_up_to(self.text.len(), on_text);
            return true;
        }
        // A trailing U+FFFD is a character whose remaining bytes have not been generated yet.
        let mut safe = self.text.trim_end_matches('\u{FFFD}').len();
        for stop in self.stop_strings {
            for cut in (1..stop.len()).rev() {
                if stop.is_char_boundary(cut) && self.text[..safe].ends_with(&stop[..cut]) {
                    safe -= cut;
                    break;
                }
            }
        }
        self.emit_up_to(safe, on_text);
        false
    }

    fn emit_up_to(&mut self, end: usize, on_text: &mut dyn FnMut(&str)) {
        // Decoding is not always prefix-stable (byte-fallback tokens can turn into different
        // replacement characters): what was sent cannot be taken back, so carry on from the
        // character boundary at or before it.
        while !self.text.is_char_boundary(self.emitted) {
            self.emitted -= 1;
        }
        if end > self.emitted && self.text.is_char_boundary(end) {
            on_text(&self.text[self.emitted..end]);
            self.emitted = end;
        }
    }

    /// Emits what was held back and returns the final, trimmed text.
    fn finish(mut self, on_text: &mut dyn FnMut(&str)) -> String {
        let end = self.text.trim_end().len();
        self.emit_up_to(end, on_text);
        self.text.truncate(end);
        self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], steps: &[&str]) -> (Vec<String>, bool, String) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut stream = TextStream::new(&stops);
        let mut pieces = Vec::new();
        let mut stopped = false;
        for step in steps {
            if stream.push(step, &mut |t| pieces.push(t.to_owned())) {
                stopped = true;
                break;
            }
        }
        let text = stream.finish(&mut |t| pieces.push(t.to_owned()));
        (pieces, stopped, text)
    }

    #[test]
    fn holds_back_possible_stop_prefixes_and_cuts_at_stop() {
        let (pieces, stopped, text) =
            run(&["END"], &[" A", " A cat E", " A cat EN", " A cat END x"]);
        assert!(stopped);
        assert_eq!(text, "A cat");
        assert_eq!(pieces.concat(), "A cat ");
        assert!(pieces.iter().all(|p| !p.contains('E')));
    }

    #[test]
    fn releases_held_text_when_it_is_not_a_stop() {
        let (pieces, stopped, text) = run(&["END"], &["A", "A E", "A Ex"]);
        assert!(!stopped);
        assert_eq!(text, "A Ex");
        assert_eq!(pieces.concat(), "A Ex");
    }

    #[test]
    fn survives_decodes_that_rewrite_sent_text() {
        let (pieces, _, text) = run(&[], &["xé", "x\u{FFFD}\u{FFFD}", "x\u{FFFD}\u{FFFD}yz"]);
        assert_eq!(text, "x\u{FFFD}\u{FFFD}yz");
        assert_eq!(pieces, vec!["xé", "\u{FFFD}\u{FFFD}yz"]);
    }

    #[test]
    fn waits_for_incomplete_characters() {
        let (pieces, _, text) = run(&[], &["caf\u{FFFD}", "café"]);
        assert_eq!(pieces, vec!["caf", "é"]);
        assert_eq!(text, "café");
    }
}
