//! HTTP handlers: chat completions (plain and server-sent events), models, health, metrics,
//! the chat page, the API key check, and JSON errors for everything else (unknown routes, panics).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use imp::{Generation, GenerationOptions, ImageId, PreparedPrompt};
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Instant;
use tower_http::catch_panic::CatchPanicLayer;

use crate::engine::{Answer, Engine, Event, Job};
use crate::error::ApiError;
use crate::images::ImageSources;
use crate::net;
use crate::openai::{self, ChatRequest};

pub struct AppState {
    pub engine: Arc<Engine>,
    pub model_names: Vec<String>,
    pub api_key: Option<String>,
    pub sources: ImageSources,
    pub max_body_bytes: usize,
    pub body_timeout: Duration,
    pub request_timeout: Duration,
    /// The chat page at `/`.
    pub webui: bool,
    pub created: u64,
}

pub fn router(state: AppState) -> Router {
    let state = Arc::new(state);
    let api = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{id}", get(get_model))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    let webui = if state.webui {
        crate::webui::routes()
    } else {
        Router::new()
    };
    Router::new()
        .merge(api)
        .merge(webui)
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::internal("internal error while handling the request").into_response()
        }))
        .layer(middleware::from_fn(net::track))
        .with_state(state)
}

async fn authorize(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if let Some(key) = &state.api_key {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            None => {
                return ApiError::unauthorized(
                    "Missing API key: send it as `Authorization: Bearer KEY`.",
                )
                .into_response()
            }
            Some(given) if !same_secret(given.trim().as_bytes(), key.as_bytes()) => {
                return ApiError::unauthorized("Incorrect API key provided.").into_response()
            }
            Some(_) => {}
        }
    }
    next.run(request).await
}

/// Compares in time independent of where the inputs differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn not_found(request: Request) -> ApiError {
    ApiError::invalid(
        format!(
            "Unknown route: {} {}.",
            request.method(),
            request.uri().path()
        ),
        None,
    )
    .with_status(StatusCode::NOT_FOUND, "invalid_request_error")
    .with_code("unknown_url")
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::invalid(
        format!(
            "Method {} is not allowed on {}.",
            request.method(),
            request.uri().path()
        ),
        None,
    )
    .with_status(StatusCode::METHOD_NOT_ALLOWED, "invalid_request_error")
    .with_code("method_not_allowed")
}

fn model_object(state: &AppState) -> Value {
    json!({
        "id": state.model_names[0],
        "object": "model",
        "created": state.created,
        "owned_by": "imp",
    })
}

async fn list_models(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({"object": "list", "data": [model_object(&state)]}))
}

async fn get_model(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if state.model_names.contains(&id) {
        Ok(Json(model_object(&state)))
    } else {
        Err(ApiError::model_not_found(&id))
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let engine = &state.engine;
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        engine.metrics.render(&engine.gauges()),
    )
}

async fn chat_completions(State(state): State<Arc<AppState>>, request: Request) -> Response {
    // Dropping `chat` at the deadline drops its `CancelOnDrop`, which stops the generation.
    let deadline = Instant::now() + state.request_timeout;
    let response = match tokio::time::timeout_at(deadline, chat(&state, request, deadline)).await {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => error.into_response(),
        Err(_) => ApiError::request_timeout(state.request_timeout).into_response(),
    };
    state.engine.metrics.response(response.status().as_u16());
    response
}

/// Sets the cancellation flag when dropped: when the client goes away, axum drops the handler
/// or the response stream that holds it.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The request body, within `--max-body-bytes` and `--body-timeout`.
async fn read_body(state: &AppState, request: Request) -> Result<Bytes, ApiError> {
    let limit = state.max_body_bytes;
    let too_large = || {
        ApiError::too_large(format!(
            "The request body is larger than the limit of {limit} bytes."
        ))
    };
    // Refused from the header, before any of the body is read (and before `100 Continue`).
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let read = Limited::new(request.into_body(), limit).collect();
    match tokio::time::timeout(state.body_timeout, read).await {
        Ok(Ok(body)) => Ok(body.to_bytes()),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => Err(ApiError::invalid(
            format!("Could not read the request body: {e}."),
            None,
        )),
        Err(_) => Err(ApiError::body_timeout(state.body_timeout)),
    }
}

async fn chat(
    state: &Arc<AppState>,
    request: Request,
    deadline: Instant,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    let body = read_body(state, request).await?;
    let request = openai::parse_request(&body)?;
    if !state.model_names.contains(&request.model) {
        return Err(ApiError::model_not_found(&request.model));
    }
    let mut images = Vec::with_capacity(request.messages.images.len());
    for image in &request.messages.images {
        images.push(state.sources.fetch(&image.url, &image.param).await?);
    }

    let model = Arc::clone(&state.engine.model);
    let prompt = request.messages.prompt(model.config().decoder.family);
    let ids: Vec<ImageId> = images.iter().map(|image| image.id).collect();
    let constraint = request.constraint.clone();
    // Tokenizing a long conversation and compiling a schema are CPU work: keep them off the
    // async threads.
    let (prepared, grammar) = tokio::task::spawn_blocking(move || {
        let prepared = PreparedPrompt::new(&model, &prompt, &ids)?;
        let grammar = constraint
            .map(|c| model.compile_constraint(&c))
            .transpose()?;
        Ok::<_, imp::Error>((prepared, grammar))
    })
    .await
    .map_err(|e| ApiError::internal(format!("preparing the prompt failed: {e}")))??;

    let cancel = Arc::new(AtomicBool::new(false));
    let guard = CancelOnDrop(Arc::clone(&cancel));
    let options = GenerationOptions {
        max_new_tokens: request
            .max_tokens
            .unwrap_or(GenerationOptions::default().max_new_tokens),
        sampling: request.sampling.clone(),
        stop_strings: request.stop.clone(),
        // The token's own log-probability comes with its alternatives.
        top_logprobs: request.logprobs.map_or(0, |k| k.max(1)),
        cancel: Some(Arc::clone(&cancel)),
        ignore_stop_tokens: false,
        grammar,
    };
    let job = Job {
        received: started,
        prepared,
        images,
        options,
        cancel,
    };
    let mut events = state.engine.submit(job).await?;

    // Failures before the first text (an undecodable image) get their own status, even when
    // streaming.
    let first = next_event(&mut events).await;
    if let Event::Done(Err(error)) = first {
        return Err(error);
    }
    state
        .engine
        .metrics
        .time_to_first_token(started.elapsed().as_secs_f64());
    let reply = Reply::new(state, request);
    if reply.request.stream {
        return Ok(reply.stream(first, events, guard, deadline));
    }
    let mut event = first;
    loop {
        match event {
            Event::Text(_) => event = next_event(&mut events).await,
            Event::Done(answer) => return Ok(Json(reply.completion(&*answer?)).into_response()),
        }
    }
}

/// The worker always ends with `Done`; a missing one means it panicked.
async fn next_event(events: &mut UnboundedReceiver<Event>) -> Event {
    events.recv().await.unwrap_or_else(|| {
        Event::Done(Err(ApiError::internal(
            "the generation stopped unexpectedly",
        )))
    })
}

/// What the response objects share.
struct Reply {
    request: ChatRequest,
    id: String,
    created: u64,
    model: String,
    engine: Arc<Engine>,
    /// `--request-timeout`, for the error at the deadline.
    timeout: Duration,
}

impl Reply {
    fn new(state: &AppState, request: ChatRequest) -> Self {
        Self {
            id: format!("chatcmpl-{:032x}", rand::random::<u128>()),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            model: state.model_names[0].clone(),
            engine: Arc::clone(&state.engine),
            timeout: state.request_timeout,
            request,
        }
    }

    fn logprobs(&self, generation: &Generation) -> Value {
        match self.request.logprobs {
            Some(k) => openai::logprobs(
                &self.engine.model,
                generation,
                k,
                0..generation.tokens.len(),
            ),
            None => Value::Null,
        }
    }

    fn completion(&self, answer: &Answer) -> Value {
        let generation = &answer.generation;
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": generation.text, "refusal": null},
                "logprobs": self.logprobs(generation),
                "finish_reason": generation.finish_reason.as_str(),
            }],
            "usage": openai::usage(generation),
            "timings": openai::timings(answer),
        })
    }

    fn chunk(&self, delta: Value, logprobs: Value, finish_reason: Option<&str>) -> SseEvent {
        self.event(json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "delta": delta,
                "logprobs": logprobs,
                "finish_reason": finish_reason,
            }],
        }))
    }

    fn event(&self, object: Value) -> SseEvent {
        SseEvent::default().data(object.to_string())
    }

    /// The SSE events for one worker event.
    fn events(&self, event: Event, out: &mut VecDeque<SseEvent>) {
        match event {
            Event::Text(text) => {
                out.push_back(self.chunk(json!({"content": text}), Value::Null, None))
            }
            Event::Done(Ok(answer)) => {
                let generation = &answer.generation;
                // Log-probabilities come with the last chunk: streamed pieces are not tokens.
                out.push_back(self.chunk(
                    json!({}),
                    self.logprobs(generation),
                    Some(generation.finish_reason.as_str()),
                ));
                if self.request.include_usage {
                    out.push_back(self.event(json!({
                        "id": self.id,
                        "object": "chat.completion.chunk",
                        "created": self.created,
                        "model": self.model,
                        "choices": [],
                        "usage": openai::usage(generation),
                        "timings": openai::timings(&answer),
                    })));
                }
                out.push_back(SseEvent::default().data("[DONE]"));
            }
            Event::Done(Err(error)) => out.push_back(self.event(error.body())),
        }
    }

    /// The stream ends with an error event at `deadline`.
    fn stream(
        self,
        first: Event,
        events: UnboundedReceiver<Event>,
        guard: CancelOnDrop,
        deadline: Instant,
    ) -> Response {
        let mut pending = VecDeque::new();
        pending.push_back(self.chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
            None,
        ));
        let finished = matches!(first, Event::Done(_));
        self.events(first, &mut pending);
        let state = StreamState {
            reply: self,
            events,
            pending,
            finished,
            deadline,
            _guard: guard,
        };
        let body = stream::unfold(state, |mut s| async move {
            loop {
                if let Some(event) = s.pending.pop_front() {
                    return Some((Ok::<_, Infallible>(event), s));
                }
                if s.finished {
                    return None;
                }
                let timeout = s.reply.timeout;
                let event = tokio::time::timeout_at(s.deadline, next_event(&mut s.events))
                    .await
                    .unwrap_or_else(|_| Event::Done(Err(ApiError::request_timeout(timeout))));
                s.finished = matches!(event, Event::Done(_));
                s.reply.events(event, &mut s.pending);
            }
        });
        Sse::new(body).into_response()
    }
}

struct StreamState {
    reply: Reply,
    events: UnboundedReceiver<Event>,
    pending: VecDeque<SseEvent>,
    finished: bool,
    deadline: Instant,
    /// Set when the stream ends, early or not: a generation still running stops.
    _guard: CancelOnDrop,
}
