//! Token ids and label masks exactly as MILVLG/imp's `train.py` builds them
//! (`preprocess_phi2`, `preprocess_qwen2`, `preprocess_phi3`, `preprocess_plain`).
//!
//! The reference does not mark answers while tokenizing; it tokenizes the whole conversation
//! once, then re-tokenizes each round and each round's prompt on their own and advances a
//! cursor by their lengths, with per-template corrections (Phi-2: the round + 1 for its `</s>`,
//! the prompt − 1 for the space that merges into the answer; Phi-3: the cursor starts after BOS
//! and both lengths − 1 for the BOS each re-tokenization adds). When the cursor does not end on
//! the conversation's token count, every label of the sample becomes −100 ("tokenization
//! mismatch ... (ignored)"). This module replays those steps on the same strings, so the quirks
//! come out the same, mismatches included.

use std::fmt;
use std::str::FromStr;

use imp::config::Family;
use imp::template::{render_chat, tokenize_prompt, Turn as ChatTurn, IMAGE_MARKER};
use imp::tokenizer::ImpTokenizer;

use crate::data::Sample;
use crate::{Error, Result};

/// The label of a position that takes no loss.
pub const IGNORE_INDEX: i64 = -100;

/// The reference pads with `<|endoftext|>` in all three families (Phi-2: pad := unk), and
/// counts the tokens that are not pad.
const PAD_TOKEN: &str = "<|endoftext|>";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Template {
    /// Stage 1 (projector pre-training): `"<image>" + caption + "\n"`.
    Plain,
    Phi2,
    Qwen2,
    Phi3,
}

impl Template {
    /// The chat template a family is fine-tuned with (stage 2).
    pub fn for_family(family: Family) -> Self {
        match family {
            Family::Phi2 => Self::Phi2,
            Family::Qwen2 => Self::Qwen2,
            Family::Phi3 => Self::Phi3,
        }
    }

    /// The family whose chat template this is; `None` for the plain template.
    pub fn family(self) -> Option<Family> {
        match self {
            Self::Plain => None,
            Self::Phi2 => Some(Family::Phi2),
            Self::Qwen2 => Some(Family::Qwen2),
            Self::Phi3 => Some(Family::Phi3),
        }
    }

    /// The name `train.py --version` knows it by (`qwen1.5` selects `qwen2`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Phi2 => "phi2",
            Self::Qwen2 => "qwen2",
            Self::Phi3 => "phi3",
        }
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Template {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "plain" => Ok(Self::Plain),
            "phi2" => Ok(Self::Phi2),
            "qwen2" | "qwen1.5" => Ok(Self::Qwen2),
            "phi3" => Ok(Self::Phi3),
            other => Err(Error::InvalidArgument(format!(
                "unknown template `{other}`: expected plain, phi2, qwen2 or phi3"
            ))),
        }
    }
}

/// One sample's ids and labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// With `image_token_id` where the reference has −200.
    pub input_ids: Vec<u32>,
    /// One per id; [`IGNORE_INDEX`] where no loss is taken.
    pub labels: Vec<i64>,
    /// The reference's tokenization-mismatch rule fired: every label is [`IGNORE_INDEX`].
    pub mismatch: bool,
}

impl Encoded {
    /// Positions that take a loss.
    pub fn loss_tokens(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE_INDEX).count()
    }
}

/// Ids and labels of `sample` in `template`, as the reference builds them. `bos` is the id the
/// tokenizer prepends (Phi-3's `<s>`), `image_token_id` stands for the image.
pub fn encode(
    template: Template,
    tokenizer: &ImpTokenizer,
    sample: &Sample,
    image_token_id: u32,
    bos: Option<u32>,
) -> Result<Encoded> {
    encode_with_limit(template, tokenizer, sample, image_token_id, bos, None)
}

/// [`encode`] with the reference's `model_max_length`: its mismatch check only runs while the
/// cursor is below it (a conversation cut at the limit is not dropped).
pub fn encode_with_limit(
    template: Template,
    tokenizer: &ImpTokenizer,
    sample: &Sample,
    image_token_id: u32,
    bos: Option<u32>,
    model_max_length: Option<usize>,
) -> Result<Encoded> {
    let tokenize = |text: &str| tokenize_prompt(tokenizer, text, bos, image_token_id);
    let mut encoded = match template.family() {
        None => encode_plain(sample, &tokenize)?,
        Some(family) => {
            let chat = Chat::of(family);
            let pad = tokenizer.token_id(PAD_TOKEN).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "the tokenizer has no `{PAD_TOKEN}`, the pad token of the {template} template"
                ))
            })?;
            chat.encode(sample, pad, model_max_length, &tokenize)?
        }
    };
    // The reference's labels copy the ids, the −200 included; llava_arch then gives the image's
    // rows label −100 whatever it was. The templates always mask it, this keeps it so.
    for (label, &id) in encoded.labels.iter_mut().zip(&encoded.input_ids) {
        if id == image_token_id {
            *label = IGNORE_INDEX;
        }
    }
    Ok(encoded)
}

fn encode_plain(
    sample: &Sample,
    tokenize: &dyn Fn(&str) -> imp::Result<Vec<u32>>,
) -> Result<Encoded> {
    // preprocess_plain asserts one human and one gpt turn with the marker, and keeps only the
    // marker of the human text.
    let caption = match (sample.has_image(), sample.conversations.as_slice()) {
        (true, [_, answer]) => &answer.value,
        _ => {
            return Err(Error::InvalidArgument(format!(
                "sample {:?}: the plain template (stage 1) takes an image sample with one question \
                 and one answer (the caption); it has {} turn(s){}",
                sample.id,
                sample.conversations.len(),
                if sample.has_image() { "" } else { " and no image" }
            )))
        }
    };
    let input_ids = tokenize(&format!("{IMAGE_MARKER}{caption}\n"))?;
    let prompt = tokenize(IMAGE_MARKER)?.len();
    let labels = input_ids
        .iter()
        .enumerate()
        .map(|(i, &id)| {
            if i < prompt {
                IGNORE_INDEX
            } else {
                i64::from(id)
            }
        })
        .collect();
    Ok(Encoded {
        input_ids,
        labels,
        mismatch: false,
    })
}

/// What differs between the three chat templates' mask builders.
struct Chat {
    family: Family,
    /// What ends a turn (`conv.sep2`): the rounds are split on it.
    turn_end: &'static str,
    /// What ends each round's prompt: `sep + "ASSISTANT" + ": "` (Phi-2), `sep2 + roles[1]`.
    assistant_header: &'static str,
    /// Where the cursor starts (Phi-3: after BOS).
    cursor_start: i64,
    /// Added to each round's token count.
    round_fix: i64,
    /// Added to each round prompt's token count.
    prompt_fix: i64,
}

impl Chat {
    fn of(family: Family) -> Self {
        match family {
            Family::Phi2 => Self {
                family: Family::Phi2,
                turn_end: "</s>",
                assistant_header: " ASSISTANT: ",
                cursor_start: 0,
                round_fix: 1,
                prompt_fix: -1,
            },
            Family::Qwen2 => Self {
                family: Family::Qwen2,
                turn_end: "<|im_end|>",
                assistant_header: "<|im_end|>\n<|im_start|>assistant\n",
                cursor_start: 0,
                round_fix: 0,
                prompt_fix: 0,
            },
            Family::Phi3 => Self {
                family: Family::Phi3,
                turn_end: "<|end|>",
                assistant_header: "<|end|>\n<|assistant|>\n",
                cursor_start: 1,
                round_fix: -1,
                prompt_fix: -1,
            },
        }
    }

    /// The rounds the reference re-tokenizes; `None` where its pairing of turns raises
    /// (IndexError: an odd number of turn ends in the texts).
    fn rounds(&self, conversation: &str) -> Option<Vec<String>> {
        let pieces: Vec<&str> = conversation.split(self.turn_end).collect();
        if self.family == Family::Phi2 {
            return Some(pieces.into_iter().map(str::to_owned).collect());
        }
        // Qwen2 / Phi-3: the pieces between the system's and the final (empty) one are paired
        // again into user + assistant rounds; the system piece joins the first.
        let middle = pieces.get(1..pieces.len().saturating_sub(1)).unwrap_or(&[]);
        if middle.is_empty() || middle.len() % 2 == 1 {
            return None;
        }
        let end = self.turn_end;
        let mut rounds: Vec<String> = middle
            .chunks_exact(2)
            .map(|pair| format!("{}{end}{}{end}", pair[0], pair[1]))
            .collect();
        rounds[0] = format!("{}{end}{}", pieces[0], rounds[0]);
        Some(rounds)
    }

    fn encode(
        &self,
        sample: &Sample,
        pad: u32,
        model_max_length: Option<usize>,
        tokenize: &dyn Fn(&str) -> imp::Result<Vec<u32>>,
    ) -> Result<Encoded> {
        let turns: Vec<ChatTurn> = sample
            .rounds()
            .map(|(question, answer)| ChatTurn {
                user: question.to_owned(),
                assistant: Some(answer.to_owned()),
            })
            .collect();
        let conversation = render_chat(self.family, &turns);
        let input_ids = tokenize(&conversation)?;
        let mut labels: Vec<i64> = input_ids.iter().map(|&id| i64::from(id)).collect();
        let total = input_ids.iter().filter(|&&id| id != pad).count() as i64;

        let mut cursor = self.cursor_start;
        let consistent = match self.rounds(&conversation) {
            None => false,
            Some(rounds) => {
                ignore(&mut labels, 0, Some(cursor));
                for round in rounds {
                    if round.is_empty() {
                        break;
                    }
                    let parts: Vec<&str> = round.split(self.assistant_header).collect();
                    let [prompt, _] = parts[..] else { break };
                    let prompt = format!("{prompt}{}", self.assistant_header);
                    let round_len = tokenize(&round)?.len() as i64 + self.round_fix;
                    let prompt_len = tokenize(&prompt)?.len() as i64 + self.prompt_fix;
                    ignore(&mut labels, cursor, Some(cursor + prompt_len));
                    cursor += round_len;
                }
                ignore(&mut labels, cursor, None);
                let checked = model_max_length.is_none_or(|max| cursor < max as i64);
                !checked || cursor == total
            }
        };
        if !consistent {
            labels.fill(IGNORE_INDEX);
        }
        Ok(Encoded {
            input_ids,
            labels,
            mismatch: !consistent,
        })
    }
}

/// `labels[start:stop] = IGNORE_INDEX` with Python's slice rules: negative bounds count from
/// the end, bounds are clamped, an empty or reversed range does nothing.
fn ignore(labels: &mut [i64], start: i64, stop: Option<i64>) {
    let len = labels.len() as i64;
    let clamp = |i: i64| if i < 0 { (i + len).max(0) } else { i.min(len) };
    let (start, stop) = (clamp(start), stop.map_or(len, clamp));
    if start < stop {
        labels[start as usize..stop as usize].fill(IGNORE_INDEX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imp::template::Turn;

    #[test]
    fn python_slices() {
        let mut labels = vec![1, 2, 3, 4];
        ignore(&mut labels, 1, Some(-1));
        assert_eq!(labels, [1, -100, -100, 4]);
        let mut labels = vec![1, 2, 3, 4];
        ignore(&mut labels, 3, Some(2));
        ignore(&mut labels, 9, None);
        assert_eq!(labels, [1, 2, 3, 4]);
        ignore(&mut labels, -1, None);
        assert_eq!(labels, [1, 2, 3, -100]);
    }

    /// The separators here are the ones `imp::template::render_chat` writes.
    #[test]
    fn separators_match_the_rendered_templates() {
        for family in [Family::Phi2, Family::Qwen2, Family::Phi3] {
            let chat = Chat::of(family);
            let turn = Turn {
                user: "Q".into(),
                assistant: Some("A".into()),
            };
            let text = render_chat(family, &[turn.clone(), turn]);
            assert!(text.ends_with(&format!("A{}", chat.turn_end)), "{family:?}");
            let rounds = chat.rounds(&text).expect("two rounds");
            let rounds: Vec<&String> = rounds.iter().filter(|r| !r.is_empty()).collect();
            assert_eq!(rounds.len(), 2, "{family:?}");
            for round in rounds {
                assert_eq!(
                    round.matches(chat.assistant_header).count(),
                    1,
                    "{family:?}"
                );
                let answer = round.strip_suffix(chat.turn_end).unwrap_or(round);
                assert!(answer.ends_with('A'), "{family:?}: {round:?}");
            }
        }
    }
}
