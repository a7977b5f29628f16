//! The OpenAI chat completions request, read into what generation needs, with errors that name
//! the field at fault (`param`), and the response objects.

use serde::Deserialize;
use serde_json::{json, Value};

use imp::messages::ChatMessages;
use imp::{Generation, SamplingParams};

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
    pub messages: ChatMessages,
    pub max_tokens: Option<usize>,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    /// `Some(k)` when `logprobs` is on: `k` alternatives per token.
    pub logprobs: Option<usize>,
    pub stream: bool,
    pub include_usage: bool,
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
    })
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
