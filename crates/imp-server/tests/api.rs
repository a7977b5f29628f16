//! The server's routes driven in process (`tower::ServiceExt::oneshot`): answers equal the
//! library's, OpenAI-shaped errors with the right status, caches, queueing and cancellation.

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

const MODEL: &str = "imp-v1.5-4b-phi3";
const QUESTION: &str = "What is shown in this image?";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../imp/tests/fixtures")
}

fn model_dir() -> PathBuf {
    fixtures().join("models").join(MODEL)
}

fn image_path() -> PathBuf {
    fixtures().join("images/skimage_chelsea.png")
}

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
fn app(args: &[&str]) -> Router {
    let dir = model_dir();
    let mut argv = vec!["imp-serve", "--model", dir.to_str().unwrap()];
    argv.extend_from_slice(args);
    let config = Cli::parse_from(argv).config;
    imp_server::app(model(), &dir, &config).unwrap()
}

fn data_url(bytes: &[u8]) -> String {
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

fn image_part(url: &str) -> Value {
    json!({"type": "image_url", "image_url": {"url": url}})
}

fn question(url: &str, extra: Value) -> Value {
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

fn chelsea() -> String {
    data_url(&std::fs::read(image_path()).unwrap())
}

fn post(body: impl Into<Body>) -> Request<Body> {
    Request::post("/v1/chat/completions")
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.into())
        .unwrap()
}

async fn send(app: &Router, request: Request<Body>) -> (StatusCode, String) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

async fn chat(app: &Router, body: &Value) -> (StatusCode, Value) {
    let (status, text) = send(app, post(body.to_string())).await;
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn metric(app: &Router, name: &str) -> f64 {
    let (_, text) = send(app, Request::get("/metrics").body(Body::empty()).unwrap()).await;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
        .parse()
        .unwrap()
}

async fn wait_for_metric(app: &Router, name: &str, value: f64) {
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
fn reference(sampling: SamplingParams, max_new_tokens: usize) -> imp::Generation {
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

#[tokio::test]
async fn plain_answer_equals_the_library() {
    let app = app(&[]);
    let sampling = SamplingParams {
        temperature: 0.8,
        top_p: Some(0.9),
        seed: 7,
        ..Default::default()
    };
    let expected = reference(sampling, 12);
    let body = question(
        &chelsea(),
        json!({"temperature": 0.8, "top_p": 0.9, "seed": 7, "max_tokens": 12, "logprobs": true, "top_logprobs": 3}),
    );
    let (status, reply) = chat(&app, &body).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let choice = &reply["choices"][0];
    assert_eq!(reply["object"], "chat.completion");
    assert_eq!(choice["message"]["content"], expected.text.as_str());
    assert_eq!(choice["finish_reason"], expected.finish_reason.as_str());
    assert_eq!(reply["usage"]["prompt_tokens"], expected.prompt_tokens);
    assert_eq!(reply["usage"]["completion_tokens"], expected.tokens.len());
    let logprobs = choice["logprobs"]["content"].as_array().unwrap();
    assert_eq!(logprobs.len(), expected.tokens.len());
    for (ours, (own, top)) in logprobs
        .iter()
        .zip(expected.logprobs.iter().zip(&expected.top_logprobs))
    {
        assert!((ours["logprob"].as_f64().unwrap() - f64::from(*own)).abs() < 1e-5);
        let alternatives = ours["top_logprobs"].as_array().unwrap();
        assert_eq!(alternatives.len(), 3);
        assert!((alternatives[0]["logprob"].as_f64().unwrap() - f64::from(top[0].1)).abs() < 1e-5);
    }
}

/// The `data:` payloads of an event stream.
fn sse_data(text: &str) -> Vec<&str> {
    text.split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .collect()
}

#[tokio::test]
async fn streamed_chunks_add_up_to_the_answer_and_end_with_usage_and_done() {
    let app = app(&[]);
    let expected = reference(SamplingParams::default(), 10);
    let body = question(
        &chelsea(),
        json!({"stream": true, "max_tokens": 10, "stream_options": {"include_usage": true}}),
    );
    let (status, text) = send(&app, post(body.to_string())).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let data = sse_data(&text);
    assert_eq!(data.last(), Some(&"[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content.trim_end(), expected.text);
    let finish = &chunks[chunks.len() - 2]["choices"][0]["finish_reason"];
    assert_eq!(finish, expected.finish_reason.as_str());
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["completion_tokens"], expected.tokens.len());
    assert_eq!(usage["prompt_tokens"], expected.prompt_tokens);
}

#[tokio::test]
async fn a_follow_up_turn_hits_the_image_and_conversation_caches() {
    let app = app(&[]);
    let url = chelsea();
    let (status, first) = chat(&app, &question(&url, json!({}))).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let answer = first["choices"][0]["message"]["content"].as_str().unwrap();
    let follow_up = json!({
        "model": MODEL,
        "temperature": 0,
        "max_tokens": 6,
        "messages": [
            {"role": "user", "content": [image_part(&url), {"type": "text", "text": QUESTION}]},
            {"role": "assistant", "content": answer},
            {"role": "user", "content": "What colour is it?"},
        ],
    });
    let (status, second) = chat(&app, &follow_up).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    let cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert!(
        cached >= first["usage"]["prompt_tokens"].as_u64().unwrap(),
        "{second}"
    );
    assert_eq!(metric(&app, "imp_image_cache_misses_total").await, 1.0);
    assert_eq!(
        metric(&app, "imp_image_cache_hits_total{tier=\"memory\"}").await,
        1.0
    );
    assert_eq!(metric(&app, "imp_kv_cache_hits_total").await, 1.0);
    assert_eq!(
        metric(&app, "imp_kv_cache_reused_tokens_total").await,
        cached as f64
    );
}

#[tokio::test]
async fn projected_images_survive_a_restart_in_the_cache_dir() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--cache-dir", dir.path().to_str().unwrap()];
    let body = question(&chelsea(), json!({}));
    let first = app(&args);
    assert_eq!(chat(&first, &body).await.0, StatusCode::OK);
    assert_eq!(metric(&first, "imp_image_cache_misses_total").await, 1.0);
    let restarted = app(&args);
    let (status, reply) = chat(&restarted, &body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        metric(&restarted, "imp_image_cache_hits_total{tier=\"disk\"}").await,
        1.0
    );
    assert_eq!(
        metric(&restarted, "imp_image_cache_misses_total").await,
        0.0
    );
    let (_, again) = chat(&first, &body).await;
    assert_eq!(reply["choices"], again["choices"]);
}

#[tokio::test]
async fn file_urls_are_read_only_inside_the_allowed_folder() {
    let images = fixtures().join("images");
    let app = app(&["--allow-files", images.to_str().unwrap()]);
    let inside = format!("file://{}", image_path().display());
    let (status, reply) = chat(&app, &question(&inside, json!({}))).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(
        reply["choices"][0]["message"]["content"],
        reference(SamplingParams::default(), 6).text.as_str()
    );
    let escape = format!("file://{}/../models/{MODEL}/config.json", images.display());
    let (status, reply) = chat(&app, &question(&escape, json!({}))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{reply}");
    assert_eq!(reply["error"]["code"], "image_path_forbidden");
    assert_eq!(reply["error"]["param"], "messages[0].content[0]");
}

async fn expect_error(
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

#[tokio::test]
async fn bad_requests_get_openai_errors_with_the_right_status() {
    let app = app(&[
        "--max-image-bytes",
        "1000000",
        "--max-body-bytes",
        "2000000",
    ]);
    let bad = StatusCode::BAD_REQUEST;
    let url = chelsea();
    let with = |extra: Value| post(question(&url, extra).to_string());
    let cases: Vec<(Request<Body>, StatusCode, Value, Value)> = vec![
        (post("{not json"), bad, Value::Null, Value::Null),
        (post("[1, 2]"), bad, Value::Null, Value::Null),
        (
            post(json!({"model": MODEL}).to_string()),
            bad,
            Value::Null,
            json!("messages"),
        ),
        (
            with(json!({"temperature": "hot"})),
            bad,
            Value::Null,
            json!("temperature"),
        ),
        (
            with(json!({"temperature": 3})),
            bad,
            Value::Null,
            json!("temperature"),
        ),
        (
            with(json!({"max_tokens": 0})),
            bad,
            Value::Null,
            json!("max_tokens"),
        ),
        (with(json!({"n": 2})), bad, Value::Null, json!("n")),
        (
            with(json!({"top_logprobs": 2})),
            bad,
            Value::Null,
            json!("top_logprobs"),
        ),
        (
            with(json!({"messages": "hi"})),
            bad,
            Value::Null,
            json!("messages"),
        ),
        (
            with(json!({"messages": []})),
            bad,
            Value::Null,
            json!("messages"),
        ),
        (
            with(json!({"messages": [{"role": "user", "content": 5}]})),
            bad,
            Value::Null,
            json!("messages[0].content"),
        ),
        (
            with(json!({"messages": [{"role": "tool", "content": "x"}]})),
            bad,
            Value::Null,
            json!("messages[0].role"),
        ),
        (
            with(json!({"messages": [{"role": "user", "content": [{"type": "audio"}]}]})),
            bad,
            Value::Null,
            json!("messages[0].content[0].type"),
        ),
        (
            with(
                json!({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}),
            ),
            bad,
            Value::Null,
            json!("messages"),
        ),
        (
            with(json!({"model": "gpt-4o"})),
            StatusCode::NOT_FOUND,
            json!("model_not_found"),
            json!("model"),
        ),
        (
            post(question("data:image/png;base64,!!!notbase64", json!({})).to_string()),
            bad,
            json!("invalid_image_url"),
            json!("messages[0].content[0]"),
        ),
        (
            post(question(&data_url(b"these bytes are not an image"), json!({})).to_string()),
            bad,
            json!("invalid_image"),
            json!("messages[0].content[0]"),
        ),
        (
            post(question(&data_url(b"not an image"), json!({"stream": true})).to_string()),
            bad,
            json!("invalid_image"),
            json!("messages[0].content[0]"),
        ),
        (
            post(question(&data_url(&vec![0u8; 1_200_000]), json!({})).to_string()),
            bad,
            json!("image_too_large"),
            json!("messages[0].content[0]"),
        ),
        (
            post(question("file:///etc/passwd", json!({})).to_string()),
            bad,
            json!("file_urls_disabled"),
            json!("messages[0].content[0]"),
        ),
        (
            post(question("https://example.com/cat.png", json!({})).to_string()),
            bad,
            json!("remote_images_disabled"),
            json!("messages[0].content[0]"),
        ),
        (
            with(
                json!({"messages": [{"role": "user", "content": [image_part(&url), image_part(&url)]}]}),
            ),
            bad,
            json!("too_many_images"),
            json!("messages[0].content"),
        ),
        (
            with(json!({"messages": [{"role": "user", "content": "word ".repeat(3000)}]})),
            bad,
            json!("context_length_exceeded"),
            json!("messages"),
        ),
        (
            post(question(&data_url(&vec![0u8; 1_600_000]), json!({})).to_string()),
            StatusCode::PAYLOAD_TOO_LARGE,
            json!("request_too_large"),
            Value::Null,
        ),
        (
            Request::get("/v1/nothing").body(Body::empty()).unwrap(),
            StatusCode::NOT_FOUND,
            json!("unknown_url"),
            Value::Null,
        ),
        (
            Request::get("/v1/chat/completions")
                .body(Body::empty())
                .unwrap(),
            StatusCode::METHOD_NOT_ALLOWED,
            json!("method_not_allowed"),
            Value::Null,
        ),
    ];
    for (request, status, code, param) in cases {
        expect_error(&app, request, status, code, param).await;
    }
    // Every failure was answered, none with a server error.
    let (_, metrics) = send(&app, Request::get("/metrics").body(Body::empty()).unwrap()).await;
    assert!(!metrics.contains("status=\"500\""), "{metrics}");
}

#[tokio::test]
async fn the_api_key_guards_v1_routes_but_not_health() {
    let app = app(&["--api-key", "sesame"]);
    let body = question(&chelsea(), json!({})).to_string();
    let unauthorized = StatusCode::UNAUTHORIZED;
    let code = json!("invalid_api_key");
    expect_error(
        &app,
        post(body.clone()),
        unauthorized,
        code.clone(),
        Value::Null,
    )
    .await;
    let mut wrong = post(body.clone());
    wrong
        .headers_mut()
        .insert(header::AUTHORIZATION, "Bearer open".parse().unwrap());
    expect_error(&app, wrong, unauthorized, code, Value::Null).await;
    let mut right = post(body);
    right
        .headers_mut()
        .insert(header::AUTHORIZATION, "Bearer sesame".parse().unwrap());
    assert_eq!(send(&app, right).await.0, StatusCode::OK);
    let health = Request::get("/health").body(Body::empty()).unwrap();
    assert_eq!(
        send(&app, health).await,
        (StatusCode::OK, r#"{"status":"ok"}"#.into())
    );
}

#[tokio::test]
async fn models_lists_the_served_model() {
    let app = app(&[]);
    let (status, text) = send(
        &app,
        Request::get("/v1/models").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let list: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(list["data"][0]["id"], MODEL);
    let one = Request::get(format!("/v1/models/{MODEL}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, one).await.0, StatusCode::OK);
}

/// A request that runs until cancelled (the tiny model's context allows about 2500 tokens).
fn long_request(stream: bool) -> Request<Body> {
    post(question(&chelsea(), json!({"max_tokens": 100_000, "stream": stream})).to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_queue_get_429_and_waiting_ones_can_leave() {
    let app = app(&["--parallel", "1", "--queue", "1"]);
    let running = tokio::spawn(app.clone().oneshot(long_request(false)));
    wait_for_metric(&app, "imp_running", 1.0).await;
    let queued = tokio::spawn(app.clone().oneshot(long_request(false)));
    wait_for_metric(&app, "imp_queue_length", 1.0).await;
    expect_error(
        &app,
        long_request(false),
        StatusCode::TOO_MANY_REQUESTS,
        json!("queue_full"),
        Value::Null,
    )
    .await;
    // Clients that go away free their place in the queue and their slot.
    queued.abort();
    wait_for_metric(&app, "imp_queue_length", 0.0).await;
    running.abort();
    wait_for_metric(&app, "imp_running", 0.0).await;
    assert_eq!(metric(&app, "imp_requests_cancelled_total").await, 1.0);
    assert_eq!(
        chat(&app, &question(&chelsea(), json!({}))).await.0,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_a_stream_cancels_its_generation() {
    let app = app(&["--parallel", "1"]);
    let response = app.clone().oneshot(long_request(true)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.data_ref().is_some_and(|d| d.starts_with(b"data: ")));
    drop(body);
    wait_for_metric(&app, "imp_requests_cancelled_total", 1.0).await;
    wait_for_metric(&app, "imp_running", 0.0).await;
    assert_eq!(metric(&app, "imp_completion_tokens_total").await, 0.0);
}

/// A loopback server that serves the fixture image, for `--allow-remote-images`.
#[tokio::test]
async fn remote_images_are_fetched_when_allowed() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let png = std::fs::read(image_path()).unwrap();
    let images = Router::new().route("/cat.png", axum::routing::get(move || async move { png }));
    let server = tokio::spawn(async move { axum::serve(listener, images).await });
    let app = app(&["--allow-remote-images"]);
    let (status, reply) = chat(
        &app,
        &question(&format!("http://{address}/cat.png"), json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(
        reply["choices"][0]["message"]["content"],
        reference(SamplingParams::default(), 6).text.as_str()
    );
    let (status, reply) = chat(
        &app,
        &question(&format!("http://{address}/missing.png"), json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{reply}");
    assert_eq!(reply["error"]["code"], "invalid_image_url");
    server.abort();
}
