//! The question types shared by reading question files (`prompts`), writing and
//! matching answers (`answers`) and scoring.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A question id: LLaVA's files use integers (POPE, VQAv2, MMBench) or strings (ScienceQA,
/// TextVQA, MME); `4` and `"4"` are different ids, as they are to the Python scripts.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum QuestionId {
    Int(i64),
    Str(String),
}

impl fmt::Display for QuestionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Int(n) => write!(f, "{n}"),
            Self::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// Where a question's picture comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageRef {
    /// A file name relative to the `--images` folder.
    File(String),
    /// Base64-encoded image bytes (MMBench's TSV).
    Embedded(String),
}

/// One question, ready to ask.
#[derive(Clone, Debug)]
pub struct Question {
    pub id: QuestionId,
    /// Line of the question file where the record starts.
    pub line: usize,
    /// What the answer line records as `prompt` (the reference's `cur_prompt`).
    pub prompt: String,
    /// The user text the model sees after the `<image>` marker.
    pub text: String,
    pub image: Option<ImageRef>,
    /// The question file's record, for scoring (labels, categories, options); MMBench's
    /// embedded image is left out.
    pub record: Map<String, Value>,
    /// Fields the reference copies into answer lines (MMBench's `round_id`, `options`,
    /// `option_char`).
    pub answer_fields: Map<String, Value>,
}
