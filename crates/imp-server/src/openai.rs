//! The OpenAI chat completions request, read into what generation needs, with errors that name
//! the field at fault (`param`), and the response objects.

use serde::Deserialize;
use serde_json::{json, Value};

use imp::messages::ChatMessages;
use imp::{Constraint, Generation, SamplingParams};

use crate::engine::Answer;
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
    response_format: Option<Value>,
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
    pub messages: ChatMessages,
    pub max_tokens: Option<usize>,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    /// `Some(k)` when `logprobs` is on: `k` alternatives per token.
    pub logprobs: Option<usize>,
    pub stream: bool,
    pub include_usage: bool,
    /// From `response_format`: what the answer must match.
    pub constraint: Option<Constraint>,
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
    let constraint = raw
        .response_format
        .as_ref()
        .map(response_format)
        .transpose()?
        .flatten();
    Ok(ChatRequest {
        model: raw.model,
        messages: ChatMessages::parse(&raw.messages)?,
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
        constraint,
    })
}

/// OpenAI's `response_format`: `{"type": "text"}`, `{"type": "json_object"}` or
/// `{"type": "json_schema", "json_schema": {"name", "description", "schema", "strict"}}`. The
/// schema itself is checked when it is compiled.
fn response_format(format: &Value) -> Result<Option<Constraint>, ApiError> {
    const PARAM: &str = "response_format";
    let invalid = |message: String, param: &str| Err(ApiError::invalid(message, Some(param)));
    let Some(object) = format.as_object() else {
        return invalid("response_format must be an object.".into(), PARAM);
    };
    match object.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(Constraint::JsonObject)),
        Some("json_schema") => {
            let param = "response_format.json_schema";
            let Some(json_schema) = object.get("json_schema").and_then(Value::as_object) else {
                return invalid(
                    "response_format of type json_schema needs a `json_schema` object.".into(),
                    param,
                );
            };
            let name = json_schema.get("name").and_then(Value::as_str);
            let valid_name = |name: &str| {
                (1..=64).contains(&name.len())
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            };
            if !name.is_some_and(valid_name) {
                return invalid(
                    "json_schema.name is required: 1 to 64 letters, digits, `_` or `-`.".into(),
                    "response_format.json_schema.name",
                );
            }
            if let Some(strict) = json_schema.get("strict") {
                if !strict.is_boolean() && !strict.is_null() {
                    return invalid(
                        "json_schema.strict must be a boolean.".into(),
                        "response_format.json_schema.strict",
                    );
                }
            }
            // OpenAI's schema is optional: without one, any JSON value.
            let schema = json_schema.get("schema").cloned().unwrap_or(json!({}));
            if !schema.is_object() && !schema.is_boolean() {
                return invalid(
                    "json_schema.schema must be a JSON Schema object.".into(),
                    "response_format.json_schema.schema",
                );
            }
            Ok(Some(Constraint::JsonSchema(schema)))
        }
        Some(other) => invalid(
            format!(
                "Unsupported response_format type {other:?}: use \"text\", \"json_object\" or \"json_schema\"."
            ),
            "response_format.type",
        ),
        None => invalid(
            "response_format needs a `type`: \"text\", \"json_object\" or \"json_schema\".".into(),
            "response_format.type",
        ),
    }
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

/// How long the answer took, beside `usage` (an extension, as llama.cpp's `timings`): what the
/// web page shows under each answer.
pub fn timings(answer: &Answer) -> Value {
    let timings = &answer.generation.timings;
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    json!({
        "time_to_first_token_ms": ms(answer.time_to_first_token),
        "prefill_ms": ms(timings.prefill),
        "decode_ms": ms(timings.decode),
        "decode_tokens": timings.decode_steps,
        "decode_tokens_per_second": timings.decode_tokens_per_second(),
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
