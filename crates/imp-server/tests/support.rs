//! Shared by the topics: the fixture model and image, the router for a command line, request
//! builders, and readers of replies and metrics.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use base64::Engine as _;
use clap::Parser;
use http_body_util::BodyExt;
use imp::{GenerationOptions, ImpModel, LoadOptions, Prompt, SamplingParams};
use imp_server::ServerConfig;
use serde_json::{json, Value};
use tower::ServiceExt;

pub const MODEL: &str = "imp-v1.5-4b-phi3";
pub const QUESTION: &str = "What is shown in this image?";

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../imp/tests/fixtures")
}

fn model_dir() -> PathBuf {
    fixtures().join("models").join(MODEL)
}

pub fn image_path() -> PathBuf {
    fixtures().join("images/skimage_chelsea.png")
}

/// The fixture model, loaded once for every test.
fn model() -> Arc<ImpModel> {
    static MODEL: OnceLock<Arc<ImpModel>> = OnceLock::new();
    MODEL
        .get_or_init(|| Arc::new(ImpModel::load(&model_dir(), &LoadOptions::default()).unwrap()))
        .clone()
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    config: ServerConfig,
}

/// The router for `imp serve --model <fixture> ARGS`.
pub fn app(args: &[&str]) -> Router {
    let dir = model_dir();
    let mut argv = vec!["imp-serve", "--model", dir.to_str().unwrap()];
    argv.extend_from_slice(args);
    let config = Cli::parse_from(argv).config;
    imp_server::app(model(), &dir, &config).unwrap()
}

pub fn data_url(bytes: &[u8]) -> String {
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

pub fn image_part(url: &str) -> Value {
    json!({"type": "image_url", "image_url": {"url": url}})
}

/// A greedy 6-token request asking [`QUESTION`] about the image at `url`, with `extra`'s fields.
pub fn question(url: &str, extra: Value) -> Value {
    let mut body = json!({
        "model": MODEL,
        "temperature": 0,
        "max_tokens": 6,
        "messages": [{"role": "user", "content": [image_part(url), {"type": "text", "text": QUESTION}]}],
    });
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    body
}

/// The fixture image as a `data:` URL.
pub fn chelsea() -> String {
    data_url(&std::fs::read(image_path()).unwrap())
}

pub fn post(body: impl Into<Body>) -> Request<Body> {
    Request::post("/v1/chat/completions")
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.into())
        .unwrap()
}

pub fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

pub async fn send(app: &Router, request: Request<Body>) -> (StatusCode, String) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

/// Posts `body`; the reply as JSON, or as a JSON string when it is not JSON.
pub async fn chat(app: &Router, body: &Value) -> (StatusCode, Value) {
    let (status, text) = send(app, post(body.to_string())).await;
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

pub async fn metric(app: &Router, name: &str) -> f64 {
    let (_, text) = send(app, get("/metrics")).await;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
        .parse()
        .unwrap()
}

pub async fn wait_for_metric(app: &Router, name: &str, value: f64) {
    let start = Instant::now();
    while metric(app, name).await != value {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{name} never reached {value}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The library's answer for the fixture question.
pub fn reference(sampling: SamplingParams, max_new_tokens: usize) -> imp::Generation {
    let image = imp::preprocess::load_rgb(&image_path()).unwrap();
    let options = GenerationOptions {
        max_new_tokens,
        sampling,
        top_logprobs: 3,
        ..Default::default()
    };
    imp::generate(
        &model(),
        &Prompt::Question(QUESTION.into()),
        &[image],
        &options,
        &mut |_| {},
    )
    .unwrap()
}

/// The greedy answer about the image at `url` is the library's answer about the fixture image.
pub async fn assert_answers_like_the_library(app: &Router, url: &str) {
    let (status, reply) = chat(app, &question(url, json!({}))).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(
        reply["choices"][0]["message"]["content"],
        reference(SamplingParams::default(), 6).text.as_str()
    );
}

/// An OpenAI-shaped error: this status, a message, a type, this code and this param.
pub async fn expect_error(
    app: &Router,
    request: Request<Body>,
    status: StatusCode,
    code: Value,
    param: Value,
) {
    let (got, text) = send(app, request).await;
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    assert_eq!(got, status, "{body}");
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(error["type"].is_string(), "{body}");
    assert_eq!(error["code"], code, "{body}");
    assert_eq!(error["param"], param, "{body}");
}

/// A request that runs until cancelled (the tiny model's context allows about 2500 tokens).
pub fn long_request(stream: bool) -> Request<Body> {
    post(question(&chelsea(), json!({"max_tokens": 100_000, "stream": stream})).to_string())
}
