//! Shared by the topics: the fixture model and image, the router for a command line, request
//! builders, and readers of replies and metrics.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
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
use imp_server::{Server, ServerConfig};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
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
pub fn model() -> Arc<ImpModel> {
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

/// The server for `imp serve --model <fixture> ARGS`, or why it refuses to start.
pub fn server(args: &[&str]) -> anyhow::Result<Server> {
    let dir = model_dir();
    let mut argv = vec!["imp-serve", "--model", dir.to_str().unwrap()];
    argv.extend_from_slice(args);
    let config = Cli::try_parse_from(argv)?.config;
    Server::new(model(), &dir, &config)
}

/// The router for `imp serve --model <fixture> ARGS`.
pub fn app(args: &[&str]) -> Router {
    server(args).unwrap().router()
}

/// `imp serve --model <fixture> ARGS` on a free loopback port.
pub struct Served {
    pub address: SocketAddr,
    /// The same server's routes, to read its metrics in process.
    pub app: Router,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Served {
    pub async fn start(args: &[&str]) -> Self {
        let server = server(args).unwrap();
        let app = server.router();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(server.run(listener, async {
            let _ = stopped.await;
        }));
        Self {
            address,
            app,
            stop,
            task,
        }
    }

    /// A client connection; its reads give up after 20 s, so that a server that never answers
    /// fails the test instead of hanging it.
    pub fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(self.address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream
    }

    /// Signals shutdown (as SIGTERM does) and waits for the server to return.
    pub async fn shut_down(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await.unwrap()
    }
}

/// Runs blocking client code (raw sockets) off the async threads.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// Reads one HTTP response from `stream`: its status and body (delimited by Content-Length).
pub fn read_response(stream: &mut TcpStream) -> (u16, String) {
    let mut bytes = Vec::new();
    let mut byte = [0u8];
    while !bytes.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).expect("a response");
        assert_eq!(n, 1, "closed after {:?}", String::from_utf8_lossy(&bytes));
        bytes.push(byte[0]);
    }
    let head = String::from_utf8(bytes).unwrap();
    let status = head[9..12].parse().unwrap();
    let length = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().unwrap())
        })
        .unwrap_or_else(|| panic!("no content-length in {head}"));
    let mut body = vec![0; length];
    stream.read_exact(&mut body).unwrap();
    (status, String::from_utf8(body).unwrap())
}

/// The server closes `stream` (end of file or reset) before its 20 s read timeout.
pub fn assert_closed(stream: &mut TcpStream) {
    let mut buffer = [0u8; 1024];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("the connection stayed open: {e}"),
        }
    }
}

/// The JSON error in an HTTP response body, checked to have this code.
pub fn assert_error_code(body: &str, code: &str) {
    let body: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    assert_eq!(body["error"]["code"], code, "{body}");
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

/// The body of a request that runs until cancelled (the tiny model's context allows about
/// 2500 tokens).
pub fn long_body(stream: bool) -> String {
    question(&chelsea(), json!({"max_tokens": 100_000, "stream": stream})).to_string()
}

pub fn long_request(stream: bool) -> Request<Body> {
    post(long_body(stream))
}

/// A raw HTTP/1.1 chat completions request with this body.
pub fn raw_post(body: &str) -> Vec<u8> {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: imp\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}
