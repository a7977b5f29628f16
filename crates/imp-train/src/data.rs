//! LLaVA training data: a JSON list (or JSON lines) of `{"id", "image"?, "conversations":
//! [{"from": "human"|"gpt", "value"}, ..]}`, checked and normalised as MILVLG/imp's
//! `LazySupervisedDataset` + `preprocess_multimodal` see it: a leading gpt turn is dropped, the
//! turns alternate, and an image sample's `<image>` marker moves to the front of its turn.
//!
//! Where the reference would crash or silently train on a broken sample (a marker count that
//! does not match the image field, an unknown role, turns out of order), reading fails with the
//! sample's index and id and what is wrong.

use std::cell::Cell;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use imp::template::IMAGE_MARKER;
use serde::de::{DeserializeSeed, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::{Error, Result};

/// Largest data file read: the LLaVA 665K mix is about 1 GB, the whole file is held in memory.
pub const MAX_FILE_BYTES: u64 = 4 << 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Human,
    Gpt,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Human => "human",
            Self::Gpt => "gpt",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    pub from: Role,
    pub value: String,
}

/// One checked sample: human and gpt turns alternating from a human one, ending with a gpt one;
/// an image sample's single `<image>` marker at the front of its first human turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub id: String,
    /// Path relative to the image folder.
    pub image: Option<String>,
    pub conversations: Vec<Turn>,
}

impl Sample {
    pub fn has_image(&self) -> bool {
        self.image.is_some()
    }

    /// The (question, answer) pairs.
    pub fn rounds(&self) -> impl Iterator<Item = (&str, &str)> {
        self.conversations
            .chunks_exact(2)
            .map(|pair| (pair[0].value.as_str(), pair[1].value.as_str()))
    }
}

/// How the file holds its samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON list (LLaVA's `.json`).
    Json,
    /// One JSON object per line.
    JsonLines,
}

/// Reads and checks a LLaVA `.json` or `.jsonl` file.
pub fn read(path: &Path) -> Result<Vec<Sample>> {
    read_limited(path, MAX_FILE_BYTES)
}

/// [`read`] with another size cap.
pub fn read_limited(path: &Path, max_bytes: u64) -> Result<Vec<Sample>> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        error: source,
    };
    // Refuses a FIFO or device without blocking on it.
    let file = imp::files::open_regular(path)?;
    let meta = file.metadata().map_err(io)?;
    if meta.len() > max_bytes {
        return Err(data_error(path, too_large(meta.len(), max_bytes)));
    }
    // `take` bounds the read even if the file grows after the check.
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > max_bytes {
        return Err(data_error(path, too_large(bytes.len() as u64, max_bytes)));
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        data_error(
            path,
            format!(
                "not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })?;
    let format = detect_format(path, &text)?;
    parse(&text, format, path)
}

fn too_large(size: u64, max: u64) -> String {
    format!("{size} bytes, more than the {max} bytes a data file may have")
}

/// `.jsonl` is JSON lines; otherwise the first character decides: `[` a JSON list, `{` JSON
/// lines.
pub fn detect_format(path: &Path, text: &str) -> Result<Format> {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("jsonl"))
    {
        return Ok(Format::JsonLines);
    }
    match strip_bom(text).trim_start().bytes().next() {
        Some(b'[') => Ok(Format::Json),
        Some(b'{') => Ok(Format::JsonLines),
        Some(_) => Err(data_error(
            path,
            "neither a JSON list of samples (starting with `[`) nor JSON lines (starting with `{`)",
        )),
        None => Err(data_error(path, "the file is empty")),
    }
}

fn strip_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

/// Parses and checks samples; `path` only names the source in errors.
pub fn parse(text: &str, format: Format, path: &Path) -> Result<Vec<Sample>> {
    let text = strip_bom(text);
    let raw = match format {
        Format::Json => parse_list(text, path)?,
        Format::JsonLines => parse_lines(text, path)?,
    };
    if raw.is_empty() {
        return Err(data_error(path, "no samples"));
    }
    raw.into_iter()
        .enumerate()
        .map(|(index, (line, sample))| {
            check(sample, index).map_err(|message| {
                let at = line.map(|l| format!(" (line {l})")).unwrap_or_default();
                data_error(path, format!("{message}{at}"))
            })
        })
        .collect()
}

/// The samples with the line each starts on (JSON lines only).
type RawSamples = Vec<(Option<usize>, RawSample)>;

fn parse_list(text: &str, path: &Path) -> Result<RawSamples> {
    let progress = Progress::default();
    let mut de = serde_json::Deserializer::from_str(text);
    let samples = SampleList(&progress)
        .deserialize(&mut de)
        .and_then(|samples| de.end().map(|()| samples))
        .map_err(|e| {
            let message = if !progress.started.get() {
                format!("expected a JSON list of samples: {e}")
            } else if progress.finished.get() {
                format!("after the list of samples: {e}")
            } else {
                format!("sample {}: {e}", progress.parsed.get())
            };
            data_error(path, message)
        })?;
    Ok(samples.into_iter().map(|s| (None, s)).collect())
}

fn parse_lines(text: &str, path: &Path) -> Result<RawSamples> {
    let mut samples = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let sample: RawSample = serde_json::from_str(line).map_err(|e| {
            data_error(
                path,
                format!("line {}: sample {}: {e}", number + 1, samples.len()),
            )
        })?;
        samples.push((Some(number + 1), sample));
    }
    Ok(samples)
}

fn data_error(path: &Path, message: impl Into<String>) -> Error {
    Error::Data {
        path: PathBuf::from(path),
        message: message.into(),
    }
}

/// A sample as written, before any check.
#[derive(Deserialize)]
struct RawSample {
    #[serde(default)]
    id: Option<serde_json::Value>,
    /// `Value` so that a non-string is reported by the checks with the sample's id.
    #[serde(default)]
    image: Option<serde_json::Value>,
    conversations: Vec<RawTurn>,
}

#[derive(Deserialize)]
struct RawTurn {
    from: String,
    value: String,
}

/// How far the list parse got, for naming the sample an error is in.
#[derive(Default)]
struct Progress {
    started: Cell<bool>,
    parsed: Cell<usize>,
    finished: Cell<bool>,
}

/// A list of samples deserialised one by one (never a whole-file `Value`, which would take
/// several times the file's size).
struct SampleList<'a>(&'a Progress);

impl<'de> DeserializeSeed<'de> for SampleList<'_> {
    type Value = Vec<RawSample>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for SampleList<'_> {
    type Value = Vec<RawSample>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of LLaVA samples")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        self.0.started.set(true);
        let mut samples = Vec::new();
        while let Some(sample) = seq.next_element()? {
            samples.push(sample);
            self.0.parsed.set(samples.len());
        }
        self.0.finished.set(true);
        Ok(samples)
    }
}

/// The checks and normalisation of one sample; the error names it.
fn check(raw: RawSample, index: usize) -> std::result::Result<Sample, String> {
    let id = match &raw.id {
        None | Some(serde_json::Value::Null) => index.to_string(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Number(n)) => n.to_string(),
        Some(other) => {
            return Err(format!(
                "sample {index}: `id` must be a string or a number, not {other}"
            ))
        }
    };
    let name = format!("sample {index} (id {id:?})");
    let fail = |problem: String| format!("{name}: {problem}");
    let image = match raw.image {
        None => None,
        Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Some(s),
        Some(serde_json::Value::String(_)) => return Err(fail("`image` is empty".into())),
        Some(other) => {
            return Err(fail(format!(
                "`image` must be a file name relative to the image folder, not {other}"
            )))
        }
    };

    let mut turns = Vec::with_capacity(raw.conversations.len());
    for (j, turn) in raw.conversations.into_iter().enumerate() {
        let from = match turn.from.as_str() {
            "human" => Role::Human,
            "gpt" => Role::Gpt,
            other => {
                return Err(fail(format!(
                    "turn {j} has unknown role {other:?} (expected \"human\" or \"gpt\")"
                )))
            }
        };
        turns.push(Turn {
            from,
            value: turn.value,
        });
    }
    if turns.is_empty() {
        return Err(fail("`conversations` is empty".into()));
    }
    // The reference skips one leading gpt turn (train.py preprocess_*).
    let skipped = usize::from(turns[0].from == Role::Gpt);
    turns.drain(..skipped);
    if turns.is_empty() {
        return Err(fail(
            "the only turn is a gpt turn; there is no question".into(),
        ));
    }
    for (j, turn) in turns.iter().enumerate() {
        let expected = if j % 2 == 0 { Role::Human } else { Role::Gpt };
        if turn.from != expected {
            return Err(fail(format!(
                "turn {} is from {} where {expected} was expected: turns must alternate \
                 human, gpt, human, gpt, ...",
                j + skipped,
                turn.from
            )));
        }
        // The reference's templates write only the role header for an empty text, which
        // shifts every later round.
        if turn.value.is_empty() {
            return Err(fail(format!(
                "turn {} ({}) is empty",
                j + skipped,
                turn.from
            )));
        }
    }
    if turns.len() % 2 == 1 {
        return Err(fail(format!(
            "the last turn ({}) is a question without an answer",
            turns.len() - 1 + skipped
        )));
    }

    let markers: Vec<(usize, usize)> = turns
        .iter()
        .enumerate()
        .map(|(j, t)| (j, t.value.matches(IMAGE_MARKER).count()))
        .filter(|&(_, n)| n > 0)
        .collect();
    let count: usize = markers.iter().map(|&(_, n)| n).sum();
    match (&image, count) {
        (Some(_), 1) if markers[0].0 == 0 => {
            turns[0].value = marker_to_front(&turns[0].value);
        }
        (Some(_), 1) => {
            return Err(fail(format!(
                "the {IMAGE_MARKER} marker is in turn {}; an image sample has it in its first \
                 human turn",
                markers[0].0 + skipped
            )))
        }
        (Some(image), 0) => {
            return Err(fail(format!(
                "`image` is {image:?} but no turn has the {IMAGE_MARKER} marker; an image sample \
                 needs exactly one, in its first human turn"
            )))
        }
        (Some(_), n) => {
            return Err(fail(format!(
                "{n} {IMAGE_MARKER} markers; an image sample needs exactly one, in its first \
                 human turn"
            )))
        }
        (None, 0) => {}
        (None, n) => {
            return Err(fail(format!(
                "{n} {IMAGE_MARKER} marker(s) in turn {} but no `image`; a text-only sample \
                 has none",
                markers[0].0 + skipped
            )))
        }
    }
    Ok(Sample {
        id,
        image,
        conversations: turns,
    })
}

/// `preprocess_multimodal`: `"<image>\n" + the text without the marker, stripped`, stripped
/// again (so a turn that is only the marker stays `"<image>"`).
pub fn marker_to_front(value: &str) -> String {
    let rest = value.replace(IMAGE_MARKER, "");
    py_strip(&format!("{IMAGE_MARKER}\n{}", py_strip(&rest))).to_owned()
}

/// Python's `str.strip()`: Rust's whitespace plus the four separators U+001C..U+001F that
/// Python also counts as whitespace.
fn py_strip(text: &str) -> &str {
    text.trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_moves_to_the_front_as_the_reference_does() {
        assert_eq!(
            marker_to_front("What is this? <image>"),
            "<image>\nWhat is this?"
        );
        assert_eq!(marker_to_front("<image>\nHi"), "<image>\nHi");
        assert_eq!(marker_to_front(" <image> "), "<image>");
        assert_eq!(marker_to_front("a\u{1f}<image>"), "<image>\na");
    }
}
