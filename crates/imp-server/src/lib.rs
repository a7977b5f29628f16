//! `imp serve`: an OpenAI-compatible HTTP server for Imp models.
//!
//! `POST /v1/chat/completions` (plain and streaming, images as `data:` URLs, `file://` paths or
//! http(s) URLs), `GET /v1/models`, `GET /health` and `GET /metrics`. Generations run on
//! blocking threads, `--parallel` at a time, with a bounded queue behind them; projected images
//! are cached by content hash, and conversation caches are kept so that the next turn only
//! prefills what is new.

mod engine;
mod error;
mod images;
mod metrics;
mod openai;
mod routes;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use candle_core::DType;
use imp::hub::{resolve_model, HubOptions};
use imp::{ImpModel, LoadOptions};

pub use error::ApiError;

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
    /// Largest accepted request body, in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    pub max_body_bytes: usize,
}

fn parse_dtype(text: &str) -> Result<DType, String> {
    match text {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        _ => Err(format!("`{text}` is not one of f32, f16, bf16")),
    }
}

/// The server's routes for a loaded model; `model_path` is where it was loaded from (it names
/// the model and keys the on-disk image cache).
pub fn app(
    model: Arc<ImpModel>,
    model_path: &Path,
    config: &ServerConfig,
) -> anyhow::Result<Router> {
    let disk = config
        .cache_dir
        .as_ref()
        .map(|dir| dir.join(images::model_fingerprint(model_path, &model)));
    let cache = images::ImageCache::new(config.image_cache, disk)?;
    let sources = images::ImageSources::new(
        config.allow_files.as_deref(),
        config.allow_remote_images,
        config.max_image_bytes,
    )?;
    let engine = engine::Engine::new(
        model,
        cache,
        config.parallel as usize,
        config.queue,
        config.sessions,
    );
    Ok(routes::router(routes::AppState {
        engine: Arc::new(engine),
        model_names: model_names(config, model_path),
        api_key: config.api_key.clone(),
        sources,
        max_body_bytes: config.max_body_bytes,
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    }))
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

/// Loads the model and serves until Ctrl-C or SIGTERM, then finishes the requests in flight.
pub async fn serve(config: ServerConfig) -> anyhow::Result<()> {
    let spec = config.model.clone();
    let dtype = config.dtype;
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
            ..Default::default()
        };
        let model = ImpModel::load(&path, &options)
            .with_context(|| format!("loading {}", path.display()))?;
        Ok((path, model))
    })
    .await??;
    let app = app(Arc::new(model), &path, &config)?;
    let listener = tokio::net::TcpListener::bind((config.host.as_str(), config.port))
        .await
        .with_context(|| format!("listening on {}:{}", config.host, config.port))?;
    eprintln!(
        "imp serve: {} on http://{}",
        model_names(&config, &path)[0],
        listener.local_addr()?
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    Ok(())
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
