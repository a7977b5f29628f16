//! Prompt templates of the Imp models (MILVLG/imp `conversation.py`) and the reference's way of
//! tokenizing a prompt around its `<image>` markers.

use crate::config::{Family, ImpConfig};
use crate::tokenizer::ImpTokenizer;
use crate::{Error, Result};

/// The marker that stands for one image's rows in a prompt.
pub const IMAGE_MARKER: &str = "<image>";

/// The system text all Imp templates share.
pub const SYSTEM_PROMPT: &str = "A chat between a curious user and an artificial intelligence \
assistant. The assistant gives helpful, detailed, and polite answers to the user's questions.";

/// One exchange of a conversation; the last turn's answer is `None` while it is being generated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    pub user: String,
    pub assistant: Option<String>,
}

impl Turn {
    pub fn question(user: impl Into<String>) -> Self {
        Self {
            user: user.into(),
            assistant: None,
        }
    }
}

/// What the caller asks: a bare question, a conversation, or a prompt already in template form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    /// A question about the images, placed after one `<image>\n` marker per image.
    Question(String),
    /// A multi-turn conversation; the caller places `<image>` markers in the user texts.
    Chat(Vec<Turn>),
    /// Used as is: the caller wrote the whole template, markers included.
    Raw(String),
}

impl Prompt {
    /// The `imp run` rule: text with a `<image>` marker is a complete prompt, other text a
    /// question to wrap in the chat template.
    pub fn from_cli(text: &str) -> Self {
        if text.contains(IMAGE_MARKER) {
            Self::Raw(text.to_owned())
        } else {
            Self::Question(text.to_owned())
        }
    }

    /// The prompt text in `family`'s template for `images` images.
    pub fn render(&self, family: Family, images: usize) -> String {
        match self {
            Self::Question(question) => {
                let user = format!("{}{question}", format!("{IMAGE_MARKER}\n").repeat(images));
                render_chat(family, &[Turn::question(user)])
            }
            Self::Chat(turns) => render_chat(family, turns),
            Self::Raw(text) => text.clone(),
        }
    }
}

/// Renders turns as `conv_phi2` (sep " ", sep2 "</s>"), `conv_qwen2` (ChatML) or `conv_phi3`;
/// an unanswered last turn ends with the assistant's header, ready for generation.
pub fn render_chat(family: Family, turns: &[Turn]) -> String {
    let mut text = String::new();
    match family {
        Family::Phi2 => {
            text.push_str(SYSTEM_PROMPT);
            text.push(' ');
            for turn in turns {
                text.push_str("USER: ");
                text.push_str(&turn.user);
                text.push_str(" ASSISTANT:");
                if let Some(answer) = &turn.assistant {
                    text.push(' ');
                    text.push_str(answer);
                    text.push_str("</s>");
                }
            }
        }
        Family::Qwen2 | Family::Phi3 => {
            let (system, user, assistant, end) = match family {
                Family::Qwen2 => (
                    "<|im_start|>system\n",
                    "<|im_start|>user\n",
                    "<|im_start|>assistant\n",
                    "<|im_end|>",
                ),
                _ => ("<|system|>\n", "<|user|>\n", "<|assistant|>\n", "<|end|>"),
            };
            text.push_str(system);
            text.push_str(SYSTEM_PROMPT);
            text.push_str(end);
            for turn in turns {
                text.push('\n');
                text.push_str(user);
                text.push_str(&turn.user);
                text.push_str(end);
                text.push('\n');
                text.push_str(assistant);
                if let Some(answer) = &turn.assistant {
                    text.push_str(answer);
                    text.push_str(end);
                }
            }
        }
    }
    text
}

/// Token strings that end an assistant turn, besides the config's EOS ids.
pub fn stop_tokens(family: Family) -> &'static [&'static str] {
    match family {
        Family::Phi2 => &["</s>"],
        Family::Qwen2 => &["<|im_end|>", "<|endoftext|>"],
        Family::Phi3 => &["<|end|>", "<|endoftext|>"],
    }
}

/// The BOS token the family's tokenizer prepends (only Phi-3's Llama tokenizer has one).
pub fn bos_token(family: Family) -> Option<&'static str> {
    match family {
        Family::Phi3 => Some("<s>"),
        Family::Phi2 | Family::Qwen2 => None,
    }
}

/// `mm_utils.tokenizer_image_token`: each text chunk between markers is tokenized on its own
/// (this matters for SentencePiece, which starts every chunk as a new word), BOS comes once at
/// the front, and each marker becomes `image_token_id`.
pub fn tokenize_prompt(
    tokenizer: &ImpTokenizer,
    prompt: &str,
    bos_token_id: Option<u32>,
    image_token_id: u32,
) -> Result<Vec<u32>> {
    let mut ids: Vec<u32> = bos_token_id.into_iter().collect();
    for (i, chunk) in prompt.split(IMAGE_MARKER).enumerate() {
        if i > 0 {
            ids.push(image_token_id);
        }
        if !chunk.is_empty() {
            ids.extend(tokenizer.encode(chunk)?);
        }
    }
    Ok(ids)
}

/// The ids the template and the generation loop need, after adding the special tokens the
/// reference adds (`</s>` for Phi-2, `<image>` for all).
pub struct SpecialTokens {
    pub image: u32,
    pub bos: Option<u32>,
    pub stop: Vec<u32>,
}

impl SpecialTokens {
    pub fn add_to(tokenizer: &mut ImpTokenizer, config: &ImpConfig) -> Result<Self> {
        let family = config.decoder.family;
        let added: &[&str] = match family {
            Family::Phi2 => &["</s>", IMAGE_MARKER],
            Family::Qwen2 | Family::Phi3 => &[IMAGE_MARKER],
        };
        let image = *tokenizer
            .ensure_special_tokens(added)?
            .last()
            .expect("one id per token");
        let bos = bos_token(family)
            .map(|bos| {
                tokenizer.token_id(bos).ok_or_else(|| {
                    Error::Tokenizer(format!("the tokenizer has no BOS token `{bos}`"))
                })
            })
            .transpose()?;
        let mut stop = config.eos_token_ids.clone();
        stop.extend(
            stop_tokens(family)
                .iter()
                .filter_map(|t| tokenizer.token_id(t)),
        );
        stop.sort_unstable();
        stop.dedup();
        Ok(Self { image, bos, stop })
    }
}
