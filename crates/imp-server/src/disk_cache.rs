//! The disk tier of the image cache (`--cache-dir`): projected rows as safetensors files named
//! by image content hash, at most `--cache-max-bytes` of them (least recently used removed
//! first). The first time the folder cannot be written (read-only, disk full) the tier is
//! switched off with one warning: a cache never fails a request.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use candle_core::Tensor;
use imp::ImageId;

const EXTENSION: &str = "safetensors";

pub struct DiskCache {
    dir: PathBuf,
    max_bytes: u64,
    index: Mutex<Index>,
    enabled: AtomicBool,
    /// Names the files being written, so that two workers storing one image never share one.
    writes: AtomicU64,
}

/// What the folder holds, by file stem (the image hash in hex).
#[derive(Default)]
struct Index {
    entries: HashMap<String, Entry>,
    total: u64,
    clock: u64,
}

struct Entry {
    bytes: u64,
    last_used: u64,
}

impl DiskCache {
    /// Opens (creating) `dir`; the use order of what it already holds is its files'
    /// modification order, since a hit touches its file.
    pub fn open(dir: PathBuf, max_bytes: Option<u64>) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir)
            .map_err(|e| anyhow::anyhow!("--cache-dir {}: {e}", dir.display()))?;
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&dir)
            .map_err(|e| anyhow::anyhow!("--cache-dir {}: {e}", dir.display()))?
            .flatten()
        {
            let path = entry.path();
            let Ok(metadata) = entry.metadata() else {
                continue;
            };
            let stem = path.file_stem().and_then(|s| s.to_str());
            if let (Some(stem), true, true) = (
                stem,
                metadata.is_file(),
                path.extension().is_some_and(|e| e == EXTENSION),
            ) {
                let modified = metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                found.push((modified, stem.to_owned(), metadata.len()));
            }
        }
        found.sort();
        let mut index = Index::default();
        for (_, stem, bytes) in found {
            index.insert(stem, bytes);
        }
        let cache = Self {
            dir,
            max_bytes: max_bytes.unwrap_or(u64::MAX),
            index: Mutex::new(index),
            enabled: AtomicBool::new(true),
            writes: AtomicU64::new(0),
        };
        // The bound may have been lowered since the last run.
        let evicted = cache.lock().evict(cache.max_bytes);
        cache.remove(evicted);
        Ok(cache)
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Bytes of the files the cache holds.
    pub fn bytes(&self) -> u64 {
        self.lock().total
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn path(&self, stem: &str) -> PathBuf {
        self.dir.join(format!("{stem}.{EXTENSION}"))
    }

    /// The file holding `id`'s rows, marked as just used; `None` when not cached.
    pub fn hit(&self, id: &ImageId) -> Option<PathBuf> {
        if !self.enabled() {
            return None;
        }
        let stem = id.to_hex();
        self.lock().touch(&stem)?;
        let path = self.path(&stem);
        // Best effort: the modification time keeps the use order across restarts.
        if let Ok(file) = std::fs::File::options().write(true).open(&path) {
            let _ = file.set_modified(SystemTime::now());
        }
        Some(path)
    }

    /// Writes `rows` for `id`, then removes least recently used files beyond the bound.
    pub fn store(&self, id: &ImageId, rows: &Tensor) {
        if !self.enabled() {
            return;
        }
        let stem = id.to_hex();
        let path = self.path(&stem);
        let write = self.writes.fetch_add(1, Ordering::Relaxed);
        // Written aside and renamed, so that a crash never leaves a half-written entry.
        let temp = self
            .dir
            .join(format!("{stem}.{}-{write}.tmp", std::process::id()));
        let written = rows
            .save_safetensors("rows", &temp)
            .map_err(|e| e.to_string())
            .and_then(|()| std::fs::rename(&temp, &path).map_err(|e| e.to_string()))
            .and_then(|()| {
                std::fs::metadata(&path)
                    .map(|m| m.len())
                    .map_err(|e| e.to_string())
            });
        match written {
            Ok(bytes) => {
                let evicted = {
                    let mut index = self.lock();
                    index.insert(stem, bytes);
                    index.evict(self.max_bytes)
                };
                self.remove(evicted);
            }
            Err(e) => {
                let _ = std::fs::remove_file(&temp);
                self.disable(&path, &e);
            }
        }
    }

    fn remove(&self, stems: Vec<String>) {
        for stem in stems {
            let path = self.path(&stem);
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    self.disable(&path, &e.to_string())
                }
                _ => {}
            }
        }
    }

    fn disable(&self, path: &Path, error: &str) {
        if self.enabled.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                "image cache {}: {error}; serving on without the disk cache",
                path.display()
            );
        }
    }
}

impl Index {
    fn insert(&mut self, stem: String, bytes: u64) {
        self.clock += 1;
        let entry = Entry {
            bytes,
            last_used: self.clock,
        };
        if let Some(old) = self.entries.insert(stem, entry) {
            self.total -= old.bytes;
        }
        self.total += bytes;
    }

    fn touch(&mut self, stem: &str) -> Option<()> {
        self.clock += 1;
        self.entries.get_mut(stem)?.last_used = self.clock;
        Some(())
    }

    /// Drops the least recently used entries until the total is within `max_bytes`; their
    /// stems, for the caller to delete outside the lock.
    fn evict(&mut self, max_bytes: u64) -> Vec<String> {
        let mut evicted = Vec::new();
        while self.total > max_bytes {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, entry)| entry.last_used)
                .map(|(stem, _)| stem.clone());
            let Some(stem) = oldest else { break };
            if let Some(entry) = self.entries.remove(&stem) {
                self.total -= entry.bytes;
            }
            evicted.push(stem);
        }
        evicted
    }
}
