//! Where request images come from (`data:` URLs, `file://` paths inside `--allow-files`, http(s)
//! when `--allow-remote-images`), and the cache of their projected rows: a bounded LRU in memory
//! backed by an optional folder that survives restarts.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use candle_core::Tensor;
use imp::messages::{decode_data_url, DataUrlError, ImageUrl};
use imp::{ImageId, ImpModel};

use crate::disk_cache::DiskCache;
use crate::error::ApiError;
use crate::metrics::Metrics;

/// Time limit for fetching one remote image, connection included.
#[cfg(feature = "remote-images")]
const FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// An image as the request gave it, before decoding.
pub struct ImageBytes {
    pub id: ImageId,
    pub bytes: Vec<u8>,
    /// For error messages: `messages[i].content[j]`.
    pub param: String,
}

pub struct ImageSources {
    /// Canonical `--allow-files` folder.
    pub allow_files: Option<PathBuf>,
    /// `Some` when remote images are allowed.
    #[cfg(feature = "remote-images")]
    http: Option<reqwest::Client>,
    pub max_bytes: usize,
}

impl ImageSources {
    pub fn new(
        allow_files: Option<&Path>,
        allow_remote: bool,
        max_bytes: usize,
    ) -> anyhow::Result<Self> {
        let allow_files = allow_files
            .map(|dir| {
                let canonical = dir
                    .canonicalize()
                    .map_err(|e| anyhow::anyhow!("--allow-files {}: {e}", dir.display()))?;
                anyhow::ensure!(
                    canonical.is_dir(),
                    "--allow-files {}: not a folder; name the folder whose images may be read",
                    dir.display()
                );
                Ok(canonical)
            })
            .transpose()?;
        #[cfg(not(feature = "remote-images"))]
        anyhow::ensure!(
            !allow_remote,
            "--allow-remote-images: this build of imp cannot fetch images (it was built without \
             the cargo feature `remote-images`)"
        );
        Ok(Self {
            allow_files,
            #[cfg(feature = "remote-images")]
            http: allow_remote
                .then(|| {
                    reqwest::Client::builder()
                        .timeout(FETCH_TIMEOUT)
                        .connect_timeout(FETCH_TIMEOUT)
                        .build()
                })
                .transpose()?,
            max_bytes,
        })
    }

    /// The bytes behind an `image_url`; `param` names it in errors.
    pub async fn fetch(&self, url: &str, param: &str) -> Result<ImageBytes, ApiError> {
        let bytes =
            match ImageUrl::parse(url) {
                ImageUrl::Data(rest) => self.data_url(rest, param)?,
                ImageUrl::File(path) => self.file(path, param).await?,
                ImageUrl::Remote(url) => self.remote(url, param).await?,
                ImageUrl::Other(_) => return Err(ApiError::invalid(
                    "Unsupported image URL: expected a `data:` URL with base64 PNG, JPEG or WebP, \
                     a `file://` path or an http(s) URL.",
                    Some(param),
                )
                .with_code("invalid_image_url")),
            };
        Ok(ImageBytes {
            id: ImageId::of_bytes(&bytes),
            bytes,
            param: param.to_owned(),
        })
    }

    fn too_large(&self, param: &str) -> ApiError {
        too_large(self.max_bytes, param)
    }

    fn data_url(&self, rest: &str, param: &str) -> Result<Vec<u8>, ApiError> {
        decode_data_url(rest, self.max_bytes).map_err(|error| match error {
            DataUrlError::TooLarge => self.too_large(param),
            DataUrlError::Invalid(message) => {
                ApiError::invalid(format!("Invalid image data URL: {message}."), Some(param))
                    .with_code("invalid_image_url")
            }
        })
    }

    /// `path`: a `file://` URL's, decoded.
    async fn file(&self, path: String, param: &str) -> Result<Vec<u8>, ApiError> {
        let Some(allowed) = &self.allow_files else {
            return Err(ApiError::invalid(
                "file:// image URLs are disabled; start the server with --allow-files DIR to \
                 allow those inside DIR.",
                Some(param),
            )
            .with_code("file_urls_disabled"));
        };
        // Canonical paths resolve `..` and symbolic links, so a prefix check is enough.
        let canonical = tokio::fs::canonicalize(&path)
            .await
            .map_err(|e| unreadable(&path, &e, param))?;
        if !canonical.starts_with(allowed) {
            return Err(ApiError::invalid(
                format!(
                    "The image file {path} is outside the folder the server allows (--allow-files)."
                ),
                Some(param),
            )
            .with_status(axum::http::StatusCode::FORBIDDEN, "permission_error")
            .with_code("image_path_forbidden"));
        }
        let limit = self.max_bytes;
        let param = param.to_owned();
        tokio::task::spawn_blocking(move || read_image_file(&canonical, &path, limit, &param))
            .await
            .map_err(|e| ApiError::internal(format!("reading an image file failed: {e}")))?
    }

    #[cfg(not(feature = "remote-images"))]
    async fn remote(&self, _: &str, param: &str) -> Result<Vec<u8>, ApiError> {
        Err(remote_images_disabled(param))
    }

    #[cfg(feature = "remote-images")]
    async fn remote(&self, url: &str, param: &str) -> Result<Vec<u8>, ApiError> {
        let Some(client) = &self.http else {
            return Err(remote_images_disabled(param));
        };
        let failed = |e: String| {
            ApiError::invalid(format!("Could not fetch image {url}: {e}."), Some(param))
                .with_code("invalid_image_url")
        };
        let mut response = client
            .get(url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| failed(e.to_string()))?;
        if response
            .content_length()
            .is_some_and(|n| n > self.max_bytes as u64)
        {
            return Err(self.too_large(param));
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| failed(e.to_string()))? {
            if bytes.len() + chunk.len() > self.max_bytes {
                return Err(self.too_large(param));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    }
}

fn remote_images_disabled(param: &str) -> ApiError {
    ApiError::invalid(
        "Remote images are disabled; send the image as a base64 data URL, or start the server \
         with --allow-remote-images.",
        Some(param),
    )
    .with_code("remote_images_disabled")
}

fn too_large(limit: usize, param: &str) -> ApiError {
    ApiError::invalid(
        format!("The image is larger than the limit of {limit} bytes."),
        Some(param),
    )
    .with_code("image_too_large")
}

fn unreadable(path: &str, error: &dyn std::fmt::Display, param: &str) -> ApiError {
    ApiError::invalid(
        format!("Cannot read image file {path}: {error}."),
        Some(param),
    )
    .with_code("invalid_image_url")
}

/// At most `limit` bytes of the regular file `canonical` (`path` as the client named it).
/// Blocking; a FIFO, device or socket is refused without being opened for a blocking read.
fn read_image_file(
    canonical: &Path,
    path: &str,
    limit: usize,
    param: &str,
) -> Result<Vec<u8>, ApiError> {
    let file = imp::files::open_regular(canonical).map_err(|e| unreadable(path, &e, param))?;
    if file.metadata().is_ok_and(|m| m.len() > limit as u64) {
        return Err(too_large(limit, param));
    }
    // The size is counted while reading too: the file may grow after the check.
    let mut bytes = Vec::new();
    file.take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| unreadable(path, &e, param))?;
    if bytes.len() > limit {
        return Err(too_large(limit, param));
    }
    Ok(bytes)
}

/// Projected rows by image content hash.
pub struct ImageCache {
    memory: Mutex<Lru>,
    /// In `--cache-dir`/`<model fingerprint>`.
    disk: Option<DiskCache>,
}

struct Lru {
    entries: HashMap<ImageId, (u64, Tensor)>,
    capacity: usize,
    clock: u64,
}

impl ImageCache {
    pub fn new(capacity: usize, disk: Option<DiskCache>) -> Self {
        Self {
            memory: Mutex::new(Lru {
                entries: HashMap::new(),
                capacity,
                clock: 0,
            }),
            disk,
        }
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether the disk tier is in use, and the bytes it holds.
    pub fn disk(&self) -> (bool, u64) {
        self.disk
            .as_ref()
            .map_or((false, 0), |disk| (disk.enabled(), disk.bytes()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru> {
        self.memory.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The image's projected rows: from memory, from disk, or computed (and then cached).
    /// Blocking: decoding and the vision tower run here.
    pub fn rows(
        &self,
        model: &ImpModel,
        image: &ImageBytes,
        metrics: &Metrics,
    ) -> Result<Tensor, ApiError> {
        if let Some(rows) = self.lock().get(&image.id) {
            metrics
                .image_cache_memory_hits
                .fetch_add(1, Ordering::Relaxed);
            return Ok(rows);
        }
        if let Some(rows) = self.load(model, &image.id) {
            metrics
                .image_cache_disk_hits
                .fetch_add(1, Ordering::Relaxed);
            self.lock().put(image.id, rows.clone());
            return Ok(rows);
        }
        metrics.image_cache_misses.fetch_add(1, Ordering::Relaxed);
        let rgb =
            imp::preprocess::decode_rgb(&image.bytes, &image.param).map_err(|e| ApiError {
                param: Some(image.param.clone()),
                ..e.into()
            })?;
        let rows = model.embed_image(&rgb)?;
        self.store(&image.id, &rows);
        self.lock().put(image.id, rows.clone());
        Ok(rows)
    }

    /// A cached file that does not hold rows of the expected shape and dtype is ignored (and
    /// overwritten once recomputed).
    fn load(&self, model: &ImpModel, id: &ImageId) -> Option<Tensor> {
        let path = self.disk.as_ref()?.hit(id)?;
        let rows = candle_core::safetensors::load(&path, model.device())
            .ok()?
            .remove("rows")?;
        let expected = (model.image_tokens(), model.config().decoder.hidden_size);
        (rows.dims2().ok()? == expected && rows.dtype() == model.decoder().dtype()).then_some(rows)
    }

    fn store(&self, id: &ImageId, rows: &Tensor) {
        if let Some(disk) = &self.disk {
            disk.store(id, rows);
        }
    }
}

impl Lru {
    fn get(&mut self, id: &ImageId) -> Option<Tensor> {
        self.clock += 1;
        let (used, rows) = self.entries.get_mut(id)?;
        *used = self.clock;
        Some(rows.clone())
    }

    fn put(&mut self, id: ImageId, rows: Tensor) {
        if self.capacity == 0 {
            return;
        }
        self.clock += 1;
        self.entries.insert(id, (self.clock, rows));
        while self.entries.len() > self.capacity {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (used, _))| *used)
                .map(|(id, _)| *id);
            if let Some(id) = oldest {
                self.entries.remove(&id);
            }
        }
    }
}

/// A folder name that changes whenever the model's files or the computed rows would: the
/// model's path, file sizes and modification times, and the run-time settings.
pub fn model_fingerprint(model_path: &Path, model: &ImpModel) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    let mut add_file = |path: &Path| {
        if let Ok(meta) = std::fs::metadata(path) {
            hasher.update(path.to_string_lossy().as_bytes());
            hasher.update(meta.len().to_le_bytes());
            if let Ok(Ok(modified)) = meta
                .modified()
                .map(|t| t.duration_since(std::time::UNIX_EPOCH))
            {
                hasher.update(modified.as_nanos().to_le_bytes());
            }
        }
    };
    let mut files = vec![model_path.to_path_buf()];
    if model_path.is_dir() {
        // Two levels: Imp-v1.5-3B-196 keeps its vision tower in a sub-folder.
        for dir in std::iter::once(model_path.to_path_buf()).chain(subdirs(model_path)) {
            files.extend(entries(&dir));
        }
    }
    files.sort();
    files.iter().for_each(|f| add_file(f));
    hasher.update(
        format!(
            "{:?} {} {}",
            model.decoder().dtype(),
            model.image_tokens(),
            model.config().vision.image_size
        )
        .as_bytes(),
    );
    let digest = hasher.finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| Some(e.ok()?.path())).collect())
        .unwrap_or_default()
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    entries(dir).into_iter().filter(|p| p.is_dir()).collect()
}
