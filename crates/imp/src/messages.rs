//! Chat messages in OpenAI's shape (`[{"role", "content"}]`, content a string or text and
//! `image_url` parts) read into Imp turns, for every front end that takes them (`imp serve`,
//! the Python package). Where the images come from is the front end's policy: this module only
//! says which URLs the messages name, in `<image>` marker order, what kind each is, and decodes
//! `data:` URLs.

use base64::Engine as _;
use serde_json::Value;

use crate::config::Family;
use crate::template::{render_chat, SYSTEM_PROMPT};
use crate::{Prompt, Turn};

/// Why messages (or an image URL in them) cannot be used: the message, and the JSON path of the
/// field at fault (`messages[1].content[0].image_url.url`) when there is one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct MessageError {
    pub message: String,
    pub param: Option<String>,
    /// A machine-readable reason where a client may want to tell it apart.
    pub code: Option<&'static str>,
}

impl MessageError {
    fn new(message: impl Into<String>, param: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            param: Some(param.into()),
            code: None,
        }
    }

    fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }
}

/// An image a message refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub url: String,
    /// Where it is in the messages, for errors about it.
    pub param: String,
}

/// Messages as Imp turns; images stay URLs until the front end fetches them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessages {
    pub system: Option<String>,
    /// The last turn is the question to answer.
    pub turns: Vec<Turn>,
    /// One per `<image>` marker in `turns`, in order.
    pub images: Vec<ImageRef>,
}

impl ChatMessages {
    /// System messages give the system text; user and assistant messages pair into turns. Each
    /// image becomes an `<image>` marker before its message's text, as in Imp's training data.
    pub fn parse(messages: &[Value]) -> Result<Self, MessageError> {
        if messages.is_empty() {
            return Err(MessageError::new(
                "messages must contain at least one message.",
                "messages",
            ));
        }
        let mut system: Option<String> = None;
        let mut turns: Vec<Turn> = Vec::new();
        let mut images = Vec::new();
        for (i, message) in messages.iter().enumerate() {
            let param = format!("messages[{i}]");
            let role = message.get("role").and_then(Value::as_str).ok_or_else(|| {
                MessageError::new(
                    "Each message needs a string `role`.",
                    format!("{param}.role"),
                )
            })?;
            let content = message.get("content").unwrap_or(&Value::Null);
            let content_param = format!("{param}.content");
            match role {
                "system" | "developer" => {
                    let text = text_only(content, &content_param)?;
                    system = Some(match system {
                        Some(s) => format!("{s}\n{text}"),
                        None => text,
                    });
                }
                "user" => {
                    let (text, message_images) = user_content(content, &content_param)?;
                    if message_images.len() > 1 {
                        return Err(MessageError::new(
                            "This model takes at most one image per message; send further \
                             images in separate messages.",
                            content_param,
                        )
                        .with_code("too_many_images"));
                    }
                    let text = format!("{}{text}", "<image>\n".repeat(message_images.len()));
                    images.extend(message_images);
                    match turns.last_mut() {
                        Some(turn) if turn.assistant.is_none() => {
                            turn.user.push('\n');
                            turn.user.push_str(&text);
                        }
                        _ => turns.push(Turn::question(text)),
                    }
                }
                "assistant" => {
                    let text = text_only(content, &content_param)?;
                    match turns.last_mut() {
                        Some(Turn {
                            assistant: Some(answer),
                            ..
                        }) => {
                            answer.push('\n');
                            answer.push_str(&text);
                        }
                        Some(turn) => turn.assistant = Some(text),
                        None => {
                            return Err(MessageError::new(
                                "The conversation must start with a user message (after any \
                                 system message).",
                                param,
                            ))
                        }
                    }
                }
                other => {
                    return Err(MessageError::new(
                        format!(
                            "Unsupported role `{other}`: expected system, developer, user or \
                             assistant."
                        ),
                        format!("{param}.role"),
                    ))
                }
            }
        }
        match turns.last() {
            Some(turn) if turn.assistant.is_none() => Ok(Self {
                system,
                turns,
                images,
            }),
            _ => Err(MessageError::new(
                "The last message must be from the user.",
                "messages",
            )),
        }
    }

    /// The prompt in the model's template. Imp's templates have a fixed system text; a
    /// different system message takes its place.
    pub fn prompt(&self, family: Family) -> Prompt {
        match &self.system {
            Some(system) if system != SYSTEM_PROMPT => {
                Prompt::Raw(render_chat(family, &self.turns).replacen(SYSTEM_PROMPT, system, 1))
            }
            _ => Prompt::Chat(self.turns.clone()),
        }
    }
}

/// A string, or an array of text parts.
fn text_only(content: &Value, param: &str) -> Result<String, MessageError> {
    let (text, images) = user_content(content, param)?;
    if !images.is_empty() {
        return Err(MessageError::new(
            "Only user messages may contain images.",
            param,
        ));
    }
    Ok(text)
}

/// The text parts joined by newlines, and the images.
fn user_content(content: &Value, param: &str) -> Result<(String, Vec<ImageRef>), MessageError> {
    let parts = match content {
        Value::String(text) => return Ok((text.clone(), Vec::new())),
        Value::Array(parts) => parts,
        _ => {
            return Err(MessageError::new(
                "Message content must be a string or an array of content parts.",
                param,
            ))
        }
    };
    let mut texts = Vec::new();
    let mut images = Vec::new();
    for (j, part) in parts.iter().enumerate() {
        let param = format!("{param}[{j}]");
        match part.get("type").and_then(Value::as_str) {
            Some("text") => match part.get("text") {
                Some(Value::String(text)) => texts.push(text.as_str()),
                _ => {
                    return Err(MessageError::new(
                        "A text part needs a string `text`.",
                        format!("{param}.text"),
                    ))
                }
            },
            Some("image_url") => {
                let image = part.get("image_url");
                // OpenAI sends `{"url": ...}`; a bare string is accepted too.
                let url = image
                    .and_then(|i| i.get("url"))
                    .or(image)
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        MessageError::new(
                            "An image_url part needs `image_url.url`.",
                            format!("{param}.image_url.url"),
                        )
                    })?;
                images.push(ImageRef {
                    url: url.to_owned(),
                    param,
                });
            }
            _ => {
                return Err(MessageError::new(
                    "Unsupported content part: expected `type` \"text\" or \"image_url\".",
                    format!("{param}.type"),
                ))
            }
        }
    }
    Ok((texts.join("\n"), images))
}

/// The bytes of a base64 `data:` URL (`rest` is what follows `data:`), refused without being
/// decoded when they would exceed `max_bytes`.
pub fn decode_data_url(rest: &str, max_bytes: usize) -> Result<Vec<u8>, DataUrlError> {
    let invalid = |message: &str| DataUrlError::Invalid(message.to_owned());
    let (header, data) = rest
        .split_once(',')
        .ok_or_else(|| invalid("no `,` before the data"))?;
    let media_type = header
        .strip_suffix(";base64")
        .ok_or_else(|| invalid("only base64 data (`data:image/png;base64,...`) is supported"))?;
    if !media_type.starts_with("image/") {
        return Err(DataUrlError::Invalid(format!(
            "media type `{media_type}` is not an image type"
        )));
    }
    // Base64 takes 4 bytes per 3.
    if data.len() / 4 * 3 > max_bytes + 3 {
        return Err(DataUrlError::TooLarge);
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data.trim_end())
        .map_err(|e| DataUrlError::Invalid(format!("the base64 does not decode ({e})")))?;
    if bytes.len() > max_bytes {
        return Err(DataUrlError::TooLarge);
    }
    Ok(bytes)
}

/// Why a `data:` URL gives no image bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataUrlError {
    Invalid(String),
    TooLarge,
}

/// Where an image URL of a message points. Which of these a front end fetches is its policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageUrl<'a> {
    /// What follows `data:`, for [`decode_data_url`].
    Data(&'a str),
    /// The path of a `file://` URL (host empty or `localhost`), `%XX` escapes decoded.
    File(String),
    /// An `http://` or `https://` URL.
    Remote(&'a str),
    /// Anything else, such as a bare path.
    Other(&'a str),
}

impl<'a> ImageUrl<'a> {
    pub fn parse(url: &'a str) -> Self {
        if let Some(rest) = url.strip_prefix("data:") {
            Self::Data(rest)
        } else if let Some(path) = url.strip_prefix("file://") {
            Self::File(percent_decode(
                path.strip_prefix("localhost").unwrap_or(path),
            ))
        } else if url.starts_with("http://") || url.starts_with("https://") {
            Self::Remote(url)
        } else {
            Self::Other(url)
        }
    }
}

/// `%XX` escapes decoded.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
