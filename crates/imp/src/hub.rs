//! Turns `--model` into a local folder: either a path, or a Hugging Face repo id such as
//! `MILVLG/Imp-v1.5-3B-196` resolved through the Hugging Face cache (the layout `huggingface-cli`
//! and transformers share, so a model fetched by either is found here) and downloaded into it
//! when files are missing and downloads are allowed. Looking in the cache is plain file reading;
//! only downloading needs the cargo feature `hub` (an HTTP client and TLS), so a build without
//! it (the static ARM64 binary) still finds models fetched by `huggingface-cli`.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

const CONFIG: &str = "config.json";
const WEIGHTS: &str = "model.safetensors";
const WEIGHTS_INDEX: &str = "model.safetensors.index.json";

/// Where and how a repo id is looked up.
#[derive(Clone, Debug)]
pub struct HubOptions {
    /// Hugging Face cache root; `None` reads HF_HUB_CACHE, then HF_HOME, as huggingface_hub does.
    pub cache_dir: Option<PathBuf>,
    /// Never touch the network; `None` reads HF_HUB_OFFLINE.
    pub offline: Option<bool>,
    /// Branch, tag or commit hash.
    pub revision: String,
    /// Draw a progress bar on stderr while downloading.
    pub progress: bool,
}

impl Default for HubOptions {
    fn default() -> Self {
        Self {
            cache_dir: None,
            offline: None,
            revision: "main".to_string(),
            progress: true,
        }
    }
}

/// The model folder `spec` names: an existing path as is, else the cache snapshot of the repo id
/// `owner/name` at `options.revision`, downloading missing files unless offline.
pub fn resolve_model(spec: &str, options: &HubOptions) -> Result<PathBuf> {
    let path = expand_home(spec);
    if path.exists() {
        return Ok(path);
    }
    let Some(repo_id) = RepoId::parse(spec) else {
        return Err(Error::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such model folder (and not a Hugging Face repo id like MILVLG/Imp-v1.5-3B-196)",
            ),
        ));
    };
    let cache = options.cache_dir.clone().unwrap_or_else(default_cache_dir);
    let (whereabouts, missing) = match cached_snapshot(&cache, &repo_id, &options.revision) {
        Some(dir) => {
            let missing = missing_files(&dir)?;
            if missing.is_empty() {
                tracing::debug!("{repo_id}: using cached snapshot {}", dir.display());
                return Ok(dir);
            }
            (
                format!("the cached snapshot {} is incomplete", dir.display()),
                missing,
            )
        }
        None => (
            format!(
                "there is no folder `{spec}`, and revision {} of the repo is not in the Hugging \
                 Face cache at {}",
                options.revision,
                cache.display()
            ),
            Missing::everything(),
        ),
    };
    let fetch_hint = fetch_hint(&repo_id, options);
    if options.offline.unwrap_or_else(offline_from_env) {
        return Err(repo_id.not_found(format!(
            "{whereabouts}; missing: {missing}. Downloads are off (offline mode or HF_HUB_OFFLINE); \
             {fetch_hint}, or run imp online (without HF_HUB_OFFLINE)"
        )));
    }
    let dir = download(&repo_id, &cache, options).map_err(|e| {
        repo_id.not_found(format!(
            "{whereabouts} (missing: {missing}) and {e}. On a machine without network access, \
             {fetch_hint} elsewhere and copy the cache folder over"
        ))
    })?;
    let missing = missing_files(&dir)?;
    if !missing.is_empty() {
        return Err(repo_id.not_found(format!(
            "revision {} of the repository lacks files imp needs: {missing}",
            options.revision
        )));
    }
    Ok(dir)
}

/// A repo id `owner/name`, restricted to the characters the Hub allows.
struct RepoId {
    owner: String,
    name: String,
}

impl RepoId {
    fn parse(spec: &str) -> Option<Self> {
        let (owner, name) = spec.split_once('/')?;
        let valid = |part: &str| {
            !part.is_empty()
                && !part.starts_with(['.', '-'])
                && !part.contains("--")
                && !part.contains("..")
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        (valid(owner) && valid(name)).then(|| Self {
            owner: owner.to_string(),
            name: name.to_string(),
        })
    }

    /// `models--{owner}--{name}`, the repo's folder in the cache.
    fn cache_folder(&self) -> String {
        format!("models--{}--{}", self.owner, self.name)
    }

    fn not_found(&self, message: String) -> Error {
        Error::ModelNotFound {
            name: self.to_string(),
            message,
        }
    }
}

impl std::fmt::Display for RepoId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.owner, self.name)
    }
}

/// The snapshot folder of `revision` if the cache knows its commit: a commit hash names the
/// snapshot directly, a branch or tag goes through `refs/{revision}`.
fn cached_snapshot(cache: &Path, repo_id: &RepoId, revision: &str) -> Option<PathBuf> {
    let repo = cache.join(repo_id.cache_folder());
    let commit = if is_commit_hash(revision) {
        revision.to_string()
    } else {
        crate::files::read_to_string(
            &repo.join("refs").join(revision),
            crate::files::limits::CONFIG_BYTES,
        )
        .ok()?
        .trim()
        .to_string()
    };
    let dir = repo.join("snapshots").join(commit);
    dir.is_dir().then_some(dir)
}

fn is_commit_hash(revision: &str) -> bool {
    revision.len() == 40
        && revision
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Files (or groups of alternatives) a model load needs that a snapshot lacks.
#[derive(Debug, Default)]
struct Missing(Vec<String>);

impl Missing {
    const WEIGHTS_ANY: &str = "model.safetensors (or model.safetensors.index.json and its shards)";
    const TOKENIZER_ANY: &str = "tokenizer.json (or vocab.json and merges.txt, or tokenizer.model)";

    /// Without a snapshot nothing is known about the repo, so name each alternative.
    fn everything() -> Self {
        Self(vec![
            CONFIG.to_string(),
            Self::WEIGHTS_ANY.to_string(),
            Self::TOKENIZER_ANY.to_string(),
        ])
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(", "))
    }
}

/// What `dir` lacks for a model load: the config, the weights (every shard the index lists), and
/// one complete set of tokenizer files. Optional files (tokenizer_config.json, ...) are not needed.
fn missing_files(dir: &Path) -> Result<Missing> {
    // `is_file` follows the cache's symlinks, so a dangling link into blobs/ counts as missing.
    let has = |file: &str| dir.join(file).is_file();
    let mut missing = Vec::new();
    if !has(CONFIG) {
        missing.push(CONFIG.to_string());
    }
    if !has(WEIGHTS) {
        if has(WEIGHTS_INDEX) {
            let shards = index_shards(&dir.join(WEIGHTS_INDEX))?;
            missing.extend(shards.into_iter().filter(|shard| !has(shard)));
        } else {
            missing.push(Missing::WEIGHTS_ANY.to_string());
        }
    }
    let tokenizer_complete =
        has("tokenizer.json") || has("tokenizer.model") || (has("vocab.json") && has("merges.txt"));
    if !tokenizer_complete {
        // Half of a vocab.json + merges.txt pair says which tokenizer the repo has.
        missing.push(match (has("vocab.json"), has("merges.txt")) {
            (true, false) => "merges.txt".to_string(),
            (false, true) => "vocab.json".to_string(),
            _ => Missing::TOKENIZER_ANY.to_string(),
        });
    }
    Ok(Missing(missing))
}

/// The shard file names an index's `weight_map` points at, each once.
fn index_shards(index: &Path) -> Result<BTreeSet<String>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: HashMap<String, String>,
    }
    let bad = |message: String| Error::Checkpoint {
        path: index.to_path_buf(),
        message,
    };
    let text = crate::files::read_to_string(index, crate::files::limits::CONFIG_BYTES)?;
    let parsed: Index = serde_json::from_str(&text).map_err(|e| {
        bad(format!(
            "not a safetensors index (a `weight_map` object): {e}"
        ))
    })?;
    Ok(parsed.weight_map.into_values().collect())
}

/// How to fetch the repo by hand, with the flags that make it land where imp looks.
fn fetch_hint(repo_id: &RepoId, options: &HubOptions) -> String {
    let mut command = format!("huggingface-cli download {repo_id}");
    if options.revision != "main" {
        command += &format!(" --revision {}", options.revision);
    }
    if let Some(cache) = &options.cache_dir {
        command += &format!(" --cache-dir {}", cache.display());
    }
    format!("fetch them with `{command}`")
}

/// Downloads what is missing of the snapshot into the cache and returns the snapshot folder;
/// the error says why not.
#[cfg(feature = "hub")]
fn download(repo_id: &RepoId, cache: &Path, options: &HubOptions) -> Result<PathBuf, String> {
    tracing::info!("{repo_id}: downloading into {}", cache.display());
    remote::download(repo_id, cache, options)
        .map_err(|e| format!("downloading from the Hugging Face Hub failed: {e}"))
}

#[cfg(not(feature = "hub"))]
fn download(_: &RepoId, _: &Path, _: &HubOptions) -> Result<PathBuf, String> {
    Err("this build of imp cannot download (it was built without the cargo feature `hub`)".into())
}

#[cfg(feature = "hub")]
mod remote {
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};
    use std::sync::{Arc, Mutex, PoisonError};

    use hf_hub::progress::{DownloadEvent, Progress, ProgressEvent, ProgressHandler};
    use hf_hub::{HFClient, HFError};
    use indicatif::{ProgressBar, ProgressStyle};

    use super::{HubOptions, RepoId};

    /// What a download fetches: configs (including a vision tower's in a subfolder), weights,
    /// tokenizer files and the optional tokenizer/generation configs. `*` also matches `/`.
    const DOWNLOAD_PATTERNS: &[&str] =
        &["*.json", "*.safetensors", "merges.txt", "tokenizer.model"];

    pub(super) fn download(
        repo_id: &RepoId,
        cache: &Path,
        options: &HubOptions,
    ) -> std::result::Result<PathBuf, HFError> {
        let client = HFClient::builder().cache_dir(cache).build_sync()?;
        let bar = options
            .progress
            .then(|| Arc::new(DownloadBar::new(repo_id.to_string())));
        let result = client
            .model(&repo_id.owner, &repo_id.name)
            .snapshot_download()
            .revision(options.revision.clone())
            .allow_patterns(DOWNLOAD_PATTERNS.iter().map(|p| p.to_string()).collect())
            .maybe_progress(bar.clone().map(Progress::from))
            .send();
        if let Some(bar) = bar {
            bar.bar.finish_and_clear();
        }
        result
    }

    /// A byte-count bar over all files of a snapshot download.
    struct DownloadBar {
        bar: ProgressBar,
        /// Latest byte count per file: the library reports per-file totals, only for files
        /// that moved.
        per_file: Mutex<HashMap<String, u64>>,
    }

    impl DownloadBar {
        fn new(label: String) -> Self {
            let bar = ProgressBar::new(0).with_message(label);
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} [{wide_bar}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} {eta}",
                )
                .expect("constant progress template"),
            );
            Self {
                bar,
                per_file: Mutex::default(),
            }
        }
    }

    impl ProgressHandler for DownloadBar {
        fn on_progress(&self, event: &ProgressEvent) {
            match event {
                ProgressEvent::Download(DownloadEvent::Start { total_bytes, .. }) => {
                    self.bar.set_length(*total_bytes);
                }
                ProgressEvent::Download(DownloadEvent::Progress { files }) => {
                    let mut per_file = self.per_file.lock().unwrap_or_else(PoisonError::into_inner);
                    for file in files {
                        per_file.insert(file.filename.clone(), file.bytes_completed);
                    }
                    self.bar.set_position(per_file.values().sum());
                }
                // Xet batch totals repeat what the per-file events already count.
                _ => {}
            }
        }
    }
}

/// HF_HUB_OFFLINE, read as huggingface_hub reads boolean variables.
fn offline_from_env() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_uppercase().as_str(),
            "1" | "ON" | "YES" | "TRUE"
        )
    })
}

/// huggingface_hub's cache root: HF_HUB_CACHE (or its old name HUGGINGFACE_HUB_CACHE), else
/// `$HF_HOME/hub`, where HF_HOME defaults to `$XDG_CACHE_HOME/huggingface` or
/// `~/.cache/huggingface`.
fn default_cache_dir() -> PathBuf {
    let var = |name: &str| {
        std::env::var(name)
            .ok()
            .filter(|v| !v.is_empty())
            .map(|v| expand_home(&v))
    };
    var("HF_HUB_CACHE")
        .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
        .unwrap_or_else(|| {
            var("HF_HOME")
                .or_else(|| var("XDG_CACHE_HOME").map(|xdg| xdg.join("huggingface")))
                .unwrap_or_else(|| expand_home("~/.cache/huggingface"))
                .join("hub")
        })
}

/// `~` and `~/...` relative to HOME, as a shell (or Python's `expanduser`) would read them.
fn expand_home(path: &str) -> PathBuf {
    let home = || std::env::var_os("HOME").map(PathBuf::from);
    match path.strip_prefix('~') {
        Some("") => home().unwrap_or_else(|| path.into()),
        Some(rest) if rest.starts_with('/') => match home() {
            Some(home) => home.join(&rest[1..]),
            None => path.into(),
        },
        _ => path.into(),
    }
}
