//! `imp serve`: an OpenAI-compatible HTTP server for Imp models.
//!
//! `POST /v1/chat/completions` (plain and streaming, images as `data:` URLs, `file://` paths or
//! http(s) URLs, answers constrained by `response_format`), `GET /v1/models`, `GET /health`,
//! `GET /metrics`, and a chat page at `/`. Generations run on
//! blocking threads, `--parallel` at a time, with a bounded queue behind them; projected images
//! are cached by content hash, and conversation caches are kept so that the next turn only
//! prefills what is new.

mod disk_cache;
mod engine;
mod error;
mod images;
mod metrics;
mod net;
mod openai;
mod routes;
mod webui;

use std::future::{Future, IntoFuture};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use candle_core::DType;
use imp::hub::{resolve_model, HubOptions};
use imp::{ImpModel, KvCache, LoadOptions};

pub use error::ApiError;
/// The request side on its own (the fuzz targets drive it): a body checked into a request,
/// and the image URLs it names turned into bytes.
pub use images::{ImageBytes, ImageSources};
pub use openai::{parse_request, ChatRequest};

/// Settings of `imp serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerConfig {
    /// Model folder, GGUF file, or Hugging Face repo id.
    #[arg(long)]
    pub model: String,
    /// The name clients pass as `model` (default: the folder or file name, or the repo id).
    #[arg(long)]
    pub model_name: Option<String>,
    /// Compute dtype: f32, f16 or bf16.
    #[arg(long, default_value = "f32", value_parser = parse_dtype)]
    pub dtype: DType,
    /// A LoRA adapter folder (PEFT's format, as `imp train` writes it), applied unmerged.
    #[arg(long)]
    pub lora: Option<PathBuf>,
    /// Storage of the attention keys and values: f32, f16, bf16 or q8. Default: f16 on the CPU.
    #[arg(long, value_parser = parse_kv_cache)]
    pub kv_cache: Option<KvCache>,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// 0 picks a free port (printed at start).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Generations that run at once.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub parallel: u32,
    /// Requests that may wait for a generation slot; more are answered 429.
    #[arg(long, default_value_t = 128)]
    pub queue: usize,
    /// Require `Authorization: Bearer KEY` on /v1 routes.
    #[arg(long, env = "IMP_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Allow `file://` image URLs inside this folder.
    #[arg(long)]
    pub allow_files: Option<PathBuf>,
    /// Allow http(s) image URLs (fetched with a 10 s limit and --max-image-bytes).
    #[arg(long)]
    pub allow_remote_images: bool,
    /// Keep projected images on disk here too, so that they survive restarts.
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Projected images kept in memory.
    #[arg(long, default_value_t = 64)]
    pub image_cache: usize,
    /// Idle conversation caches (key/value caches) kept for follow-up turns.
    #[arg(long, default_value_t = 16)]
    pub sessions: usize,
    /// Largest accepted image file, in bytes.
    #[arg(long, default_value_t = 20 << 20)]
    pub max_image_bytes: usize,
    /// Bound on the disk image cache of this model (--cache-dir), in bytes; the least
    /// recently used images are removed first.
    #[arg(long, requires = "cache_dir")]
    pub cache_max_bytes: Option<u64>,
    /// Largest accepted request body, in bytes; a larger Content-Length is answered 413 before
    /// the body is read.
    #[arg(long, default_value_t = 64 << 20)]
    pub max_body_bytes: usize,
    /// Seconds a client may take to send a request's headers, from their first byte.
    #[arg(long, default_value = "10", value_parser = parse_seconds)]
    pub header_timeout: Duration,
    /// Seconds a client may take to send a request's body (answered 408 after).
    #[arg(long, default_value = "30", value_parser = parse_seconds)]
    pub body_timeout: Duration,
    /// Seconds a connection may stay silent between requests, or read nothing of a response,
    /// before it is closed.
    #[arg(long, default_value = "60", value_parser = parse_seconds)]
    pub idle_timeout: Duration,
    /// Seconds a request may take, waiting in the queue and generating included; a longer one
    /// is answered 504 (a stream that started ends with an error event) and its generation is
    /// stopped.
    #[arg(long, default_value = "600", value_parser = parse_seconds)]
    pub request_timeout: Duration,
    /// Open connections at most; further clients wait in the listen backlog (not refused)
    /// until one closes.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Seconds that requests in flight get to finish after SIGTERM or Ctrl-C (queued ones are
    /// answered 503 at once); connections still open after it are closed.
    #[arg(long, default_value = "30", value_parser = parse_seconds)]
    pub grace_period: Duration,
    /// Serve no chat page at `/` (the API only).
    #[arg(long)]
    pub no_webui: bool,
}

impl ServerConfig {
    /// Refuses settings that cannot work, before the model is loaded.
    pub fn check(&self) -> anyhow::Result<()> {
        // An empty key would be a guard anyone passes by sending `Bearer `.
        if self.api_key.as_deref().is_some_and(|k| k.trim().is_empty()) {
            anyhow::bail!("--api-key (or IMP_API_KEY) is empty; give a key, or leave it unset");
        }
        if let Some(dir) = &self.allow_files {
            images::ImageSources::new(Some(dir), false, self.max_image_bytes)?;
        }
        Ok(())
    }
}

/// A positive number of seconds, fractions allowed.
fn parse_seconds(text: &str) -> Result<Duration, String> {
    match text.parse::<f64>().map(Duration::try_from_secs_f64) {
        Ok(Ok(duration)) if !duration.is_zero() => Ok(duration),
        _ => Err(format!("`{text}` is not a positive number of seconds")),
    }
}

fn parse_dtype(text: &str) -> Result<DType, String> {
    imp::dtype_from_name(text).map_err(|e| e.to_string())
}

fn parse_kv_cache(text: &str) -> Result<KvCache, String> {
    text.parse().map_err(|e: imp::Error| e.to_string())
}

/// A loaded model behind its routes, with the connection limits it is served under.
pub struct Server {
    router: Router,
    engine: Arc<engine::Engine>,
    timeouts: net::Timeouts,
    max_connections: usize,
    grace_period: Duration,
}

impl Server {
    /// The server for a loaded model; `model_path` is where it was loaded from (it names the
    /// model and keys the on-disk image cache). Fails on settings that cannot work.
    pub fn new(
        model: Arc<ImpModel>,
        model_path: &Path,
        config: &ServerConfig,
    ) -> anyhow::Result<Self> {
        config.check()?;
        let disk = config
            .cache_dir
            .as_ref()
            .map(|dir| {
                let dir = dir.join(images::model_fingerprint(model_path, &model));
                disk_cache::DiskCache::open(dir, config.cache_max_bytes)
            })
            .transpose()?;
        let cache = images::ImageCache::new(config.image_cache, disk);
        let sources = images::ImageSources::new(
            config.allow_files.as_deref(),
            config.allow_remote_images,
            config.max_image_bytes,
        )?;
        let engine = Arc::new(engine::Engine::new(
            model,
            cache,
            config.parallel as usize,
            config.queue,
            config.sessions,
        ));
        let router = routes::router(routes::AppState {
            engine: Arc::clone(&engine),
            model_names: model_names(config, model_path),
            api_key: config.api_key.clone(),
            sources,
            max_body_bytes: config.max_body_bytes,
            body_timeout: config.body_timeout,
            request_timeout: config.request_timeout,
            webui: !config.no_webui,
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        });
        Ok(Self {
            router,
            engine,
            timeouts: net::Timeouts {
                header: config.header_timeout,
                idle: config.idle_timeout,
            },
            max_connections: config.max_connections as usize,
            grace_period: config.grace_period,
        })
    }

    /// The routes alone, to be driven in process.
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// Serves on `listener` until `shutdown` completes; then takes no new connections nor
    /// generations (queued requests are answered 503), lets the requests in flight finish for
    /// up to the grace period, and returns.
    pub async fn run(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let engine = Arc::clone(&self.engine);
        tokio::spawn(async move {
            shutdown.await;
            engine.close();
            let _ = stop.send(true);
        });
        let signalled = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
            let _ = stopped.wait_for(|&s| s).await;
        };
        let listener = net::Limited::new(listener, self.max_connections, self.timeouts);
        let service = self
            .router
            .into_make_service_with_connect_info::<net::Activity>();
        let served = axum::serve(listener, service)
            .with_graceful_shutdown(signalled(stopped.clone()))
            .into_future();
        let grace = self.grace_period;
        let grace_over = async move {
            signalled(stopped).await;
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            result = served => result?,
            () = grace_over => eprintln!(
                "imp serve: the grace period ({} s) is over; closing the connections left",
                grace.as_secs_f64()
            ),
        }
        Ok(())
    }
}

/// The server's routes for a loaded model (see [`Server::new`]).
pub fn app(
    model: Arc<ImpModel>,
    model_path: &Path,
    config: &ServerConfig,
) -> anyhow::Result<Router> {
    Ok(Server::new(model, model_path, config)?.router())
}

/// The names a request's `model` may use; the first is the one `/v1/models` reports.
fn model_names(config: &ServerConfig, model_path: &Path) -> Vec<String> {
    let spec = config.model.trim_end_matches('/');
    let default = if Path::new(spec).exists() {
        model_path
            .file_name()
            .map_or_else(|| spec.to_owned(), |n| n.to_string_lossy().into_owned())
    } else {
        spec.to_owned()
    };
    let mut names = vec![
        config.model_name.clone().unwrap_or(default),
        spec.to_owned(),
    ];
    names.dedup();
    names
}

/// The runtime [`serve`] needs. Its blocking threads (generations, tokenization, file reads) are
/// bounded: at tokio's default of 512, a burst of requests left a hundred idle threads that the
/// steady traffic after it kept alive, each holding its stack and malloc arena (20 MB of RSS
/// under `scripts/soak.py`'s flood). Generations take `--parallel` of them, the rest one per core.
pub fn runtime(config: &ServerConfig) -> std::io::Result<tokio::runtime::Runtime> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(config.parallel as usize + cores)
        .build()
}

/// Loads the model and serves until Ctrl-C or SIGTERM, then finishes the requests in flight
/// (see [`Server::run`]).
pub async fn serve(config: ServerConfig) -> anyhow::Result<()> {
    config.check()?;
    let spec = config.model.clone();
    let (dtype, kv_cache) = (config.dtype, config.kv_cache);
    let lora = config.lora.clone();
    let (path, model) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let path = resolve_model(&spec, &HubOptions::default())?;
        let adapter = lora
            .map(|dir| {
                imp::adapter::Adapter::load(&dir, &candle_core::Device::Cpu)
                    .map(Arc::new)
                    .with_context(|| format!("loading the adapter {}", dir.display()))
            })
            .transpose()?;
        let options = LoadOptions {
            dtype,
            adapter,
            kv_cache,
            ..Default::default()
        };
        let model = ImpModel::load(&path, &options)
            .with_context(|| format!("loading {}", path.display()))?;
        Ok((path, model))
    })
    .await??;
    let server = Server::new(Arc::new(model), &path, &config)?;
    let listener = tokio::net::TcpListener::bind((config.host.as_str(), config.port))
        .await
        .with_context(|| format!("listening on {}:{}", config.host, config.port))?;
    eprintln!(
        "imp serve: {} on http://{}",
        model_names(&config, &path)[0],
        listener.local_addr()?
    );
    server.run(listener, shutdown_signal()).await
}

async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
    eprintln!("imp serve: shutting down once the requests in flight are answered");
}
