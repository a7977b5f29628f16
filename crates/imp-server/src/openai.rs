//! The OpenAI chat completions request, read into what generation needs, with errors that name
//! the field at fault (`param`), and the response objects.

use serde::Deserialize;
use serde_json::{json, Value};

use imp::template::{render_chat, SYSTEM_PROMPT};
use imp::{Generation, Prompt, SamplingParams, Turn};

use crate::error::ApiError;

/// OpenAI's limit on `top_logprobs`.
const MAX_TOP_LOGPROBS: u32 = 20;

/// The fields we read; others (`user`, `metadata`, ...) are accepted and ignored.
#[derive(Deserialize)]
struct RawRequest {
    model: String,
    messages: Vec<Value>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    seed: Option<i64>,
    stop: Option<Stop>,
    logprobs: Option<bool>,
    top_logprobs: Option<u32>,
    n: Option<u32>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

/// A chat completion request, checked.
pub struct ChatRequest {
    pub model: String,
    pub conversation: Conversation,
    pub max_tokens: Option<usize>,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    /// `Some(k)` when `logprobs` is on: `k` alternatives per token.
    pub logprobs: Option<usize>,
    pub stream: bool,
    pub include_usage: bool,
}

/// The messages as Imp turns; images stay URLs until fetched.
pub struct Conversation {
    system: Option<String>,
    turns: Vec<Turn>,
    /// `(url, param)` in marker order.
    pub image_urls: Vec<(String, String)>,
}

impl Conversation {
    /// The prompt in the model's template. Imp's templates have a fixed system text; a
    /// different system message takes its place.
    pub fn prompt(&self, family: imp::config::Family) -> Prompt {
        match &self.system {
            Some(system) if system != SYSTEM_PROMPT => {
                Prompt::Raw(render_chat(family, &self.turns).replacen(SYSTEM_PROMPT, system, 1))
            }
            _ => Prompt::Chat(self.turns.clone()),
        }
    }
}

pub fn parse_request(body: &[u8]) -> Result<ChatRequest, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid(format!("The request body is not valid JSON: {e}."), None)
    })?;
    if !value.is_object() {
        return Err(ApiError::invalid(
            "The request body must be a JSON object.",
            None,
        ));
    }
    let raw: RawRequest = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // A missing field is reported at its parent; name the field itself.
        let param = match inner.strip_prefix("missing field `") {
            Some(rest) => rest.split('`').next().unwrap_or_default().to_owned(),
            None => path,
        };
        ApiError::invalid(format!("Invalid request: {inner}."), Some(&param))
    })?;

    if raw.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid("Only n = 1 is supported.", Some("n")));
    }
    let max_tokens = match raw.max_completion_tokens.or(raw.max_tokens) {
        Some(0) => {
            let param = if raw.max_completion_tokens.is_some() {
                "max_completion_tokens"
            } else {
                "max_tokens"
            };
            return Err(ApiError::invalid("must be at least 1.", Some(param)));
        }
        other => other.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
    };
    // OpenAI's defaults: temperature 1 and a fresh seed per request.
    let temperature = raw.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            format!("temperature must be between 0 and 2, got {temperature}."),
            Some("temperature"),
        ));
    }
    if raw.top_p.is_some_and(|p| !(p > 0.0 && p <= 1.0)) {
        return Err(ApiError::invalid("top_p must be in (0, 1].", Some("top_p")));
    }
    let sampling = SamplingParams {
        temperature,
        top_p: raw.top_p,
        seed: raw.seed.map_or_else(rand::random, |s| s as u64),
        ..Default::default()
    };
    let stop = match raw.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };
    if stop.len() > 4 {
        return Err(ApiError::invalid(
            "At most 4 stop sequences are allowed.",
            Some("stop"),
        ));
    }
    let logprobs = match (raw.logprobs.unwrap_or(false), raw.top_logprobs) {
        (_, Some(k)) if k > MAX_TOP_LOGPROBS => {
            return Err(ApiError::invalid(
                format!("top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}."),
                Some("top_logprobs"),
            ))
        }
        (false, Some(k)) if k > 0 => {
            return Err(ApiError::invalid(
                "top_logprobs requires logprobs to be true.",
                Some("top_logprobs"),
            ))
        }
        (true, k) => Some(k.unwrap_or(0) as usize),
        (false, _) => None,
    };
    let stream = raw.stream.unwrap_or(false);
    Ok(ChatRequest {
        model: raw.model,
        conversation: parse_messages(&raw.messages)?,
        max_tokens,
        sampling,
        stop,
        logprobs,
        stream,
        include_usage: stream
            && raw
                .stream_options
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
    })
}

/// System messages give the system text; user and assistant messages pair into turns. Each
/// image becomes an `<image>` marker before its message's text, as in Imp's training data.
fn parse_messages(messages: &[Value]) -> Result<Conversation, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "messages must contain at least one message.",
            Some("messages"),
        ));
    }
    let mut system: Option<String> = None;
    let mut turns: Vec<Turn> = Vec::new();
    let mut image_urls = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let param = format!("messages[{i}]");
        let role = message.get("role").and_then(Value::as_str).ok_or_else(|| {
            ApiError::invalid(
                "Each message needs a string `role`.",
                Some(&format!("{param}.role")),
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
                let (text, images) = user_content(content, &content_param)?;
                if images.len() > 1 {
                    return Err(ApiError::invalid(
                        "This model takes at most one image per message; send further images \
                         in separate messages.",
                        Some(&content_param),
                    )
                    .with_code("too_many_images"));
                }
                let text = format!("{}{text}", "<image>\n".repeat(images.len()));
                image_urls.extend(images);
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
                        return Err(ApiError::invalid(
                            "The conversation must start with a user message (after any system \
                             message).",
                            Some(&param),
                        ))
                    }
                }
            }
            other => {
                return Err(ApiError::invalid(
                    format!(
                        "Unsupported role `{other}`: expected system, developer, user or \
                         assistant."
                    ),
                    Some(&format!("{param}.role")),
                ))
            }
        }
    }
    match turns.last() {
        Some(turn) if turn.assistant.is_none() => Ok(Conversation {
            system,
            turns,
            image_urls,
        }),
        _ => Err(ApiError::invalid(
            "The last message must be from the user.",
            Some("messages"),
        )),
    }
}

/// A string, or an array of text parts.
fn text_only(content: &Value, param: &str) -> Result<String, ApiError> {
    let (text, images) = user_content(content, param)?;
    if !images.is_empty() {
        return Err(ApiError::invalid(
            "Only user messages may contain images.",
            Some(param),
        ));
    }
    Ok(text)
}

/// The text parts joined by newlines, and the images' `(url, param)`.
fn user_content(content: &Value, param: &str) -> Result<(String, Vec<(String, String)>), ApiError> {
    let parts = match content {
        Value::String(text) => return Ok((text.clone(), Vec::new())),
        Value::Array(parts) => parts,
        _ => {
            return Err(ApiError::invalid(
                "Message content must be a string or an array of content parts.",
                Some(param),
            ))
        }
    };
    let mut texts = Vec::new();
    let mut images = Vec::new();
    for (j, part) in parts.iter().enumerate() {
        let param = format!("{param}[{j}]");
        let kind = part.get("type").and_then(Value::as_str);
        match kind {
            Some("text") => match part.get("text") {
                Some(Value::String(text)) => texts.push(text.as_str()),
                _ => {
                    return Err(ApiError::invalid(
                        "A text part needs a string `text`.",
                        Some(&format!("{param}.text")),
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
                        ApiError::invalid(
                            "An image_url part needs `image_url.url`.",
                            Some(&format!("{param}.image_url.url")),
                        )
                    })?;
                images.push((url.to_owned(), param));
            }
            _ => {
                return Err(ApiError::invalid(
                    "Unsupported content part: expected `type` \"text\" or \"image_url\".",
                    Some(&format!("{param}.type")),
                ))
            }
        }
    }
    Ok((texts.join("\n"), images))
}

pub fn usage(generation: &Generation) -> Value {
    let completion = generation.tokens.len();
    json!({
        "prompt_tokens": generation.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": generation.prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": generation.reused_tokens},
    })
}

/// `choices[0].logprobs` for `tokens[range]` of a generation.
pub fn logprobs(
    model: &imp::ImpModel,
    generation: &Generation,
    alternatives: usize,
    range: std::ops::Range<usize>,
) -> Value {
    let token = |id: u32| {
        let text = model.tokenizer().decode(&[id], false).unwrap_or_default();
        let bytes = text.as_bytes().to_vec();
        (text, bytes)
    };
    let content: Vec<Value> = range
        .map(|i| {
            let (text, bytes) = token(generation.tokens[i]);
            let top: Vec<Value> = generation.top_logprobs[i]
                .iter()
                .take(alternatives)
                .map(|&(id, logprob)| {
                    let (text, bytes) = token(id);
                    json!({"token": text, "logprob": logprob, "bytes": bytes})
                })
                .collect();
            json!({
                "token": text,
                "logprob": generation.logprobs[i],
                "bytes": bytes,
                "top_logprobs": top,
            })
        })
        .collect();
    json!({"content": content})
}
