//! Every file imp reads or writes goes through here, so that no input can exhaust memory or
//! hang a reader, and no output can destroy what is not ours.
//!
//! Reads: only regular files (a FIFO, device or socket is refused before anything is read;
//! unix opens are non-blocking, so a FIFO swapped in after the check cannot hang us either),
//! and never more than a stated cap, counted while reading rather than trusted from the size
//! the file system reports.
//!
//! Writes: an output path may not be anything but a regular file, may not be one of the
//! command's inputs, and replaces an existing file only when the caller says so (`--force`).
//! Files are written beside their target and renamed over it, so a failed write leaves the old
//! file, or nothing, in place.

use std::fs::{File, Metadata};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Caps on what a reader accepts, by kind of file.
pub mod limits {
    /// `config.json`, `tokenizer_config.json`, a safetensors index, an adapter config: JSON
    /// that describes a model (the largest released ones are a few hundred kB).
    pub const CONFIG_BYTES: u64 = 16 << 20;
    /// `tokenizer.json`, `vocab.json`, `merges.txt`, `tokenizer.model` (Qwen2's is 7 MB).
    pub const TOKENIZER_BYTES: u64 = 128 << 20;
    /// An encoded image (the server has its own, usually smaller, `--max-image-bytes`).
    pub const IMAGE_BYTES: u64 = 256 << 20;
    /// Question, answer and training-data files.
    pub const DATA_BYTES: u64 = 4 << 30;
}

fn describe(metadata: &Metadata) -> &'static str {
    let kind = metadata.file_type();
    if kind.is_file() {
        return "a regular file";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return "a FIFO";
        }
        if kind.is_char_device() || kind.is_block_device() {
            return "a device";
        }
        if kind.is_socket() {
            return "a socket";
        }
    }
    if kind.is_dir() {
        "a folder"
    } else {
        "neither a file nor a folder"
    }
}

fn not_regular(path: &Path, metadata: &Metadata) -> Error {
    Error::io(
        path,
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("is {}, not a regular file", describe(metadata)),
        ),
    )
}

/// Opens `path` for reading if it is a regular file, without blocking on a FIFO.
pub fn open_regular(path: &Path) -> Result<File> {
    let metadata = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !metadata.is_file() {
        return Err(not_regular(path, &metadata));
    }
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path).map_err(|e| Error::io(path, e))?;
    // The path may have been replaced between the check and the open.
    let metadata = file.metadata().map_err(|e| Error::io(path, e))?;
    if !metadata.is_file() {
        return Err(not_regular(path, &metadata));
    }
    Ok(file)
}

/// The regular file `path` mapped into memory (weights: read lazily, never copied).
pub fn map(path: &Path) -> Result<memmap2::Mmap> {
    let file = open_regular(path)?;
    // SAFETY: the map is read-only; as for every mapped model file, the program's answers are
    // only as good as the file, which must not be truncated while it is in use.
    unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))
}

/// The whole of the regular file `path`, refused once it passes `limit` bytes.
pub fn read(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let file = open_regular(path)?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > limit {
        return Err(too_large(path, limit));
    }
    Ok(bytes)
}

/// [`read`] as UTF-8 text.
pub fn read_to_string(path: &Path, limit: u64) -> Result<String> {
    String::from_utf8(read(path, limit)?).map_err(|_| {
        Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, "is not UTF-8 text"),
        )
    })
}

fn too_large(path: &Path, limit: u64) -> Error {
    Error::io(
        path,
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("is larger than the {} MiB allowed", limit >> 20),
        ),
    )
}

/// Whether an existing output may be replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overwrite {
    /// An existing file is an error naming `--force`.
    #[default]
    Refuse,
    /// An existing regular file is replaced (`--force`).
    Replace,
}

impl Overwrite {
    /// [`Overwrite::Replace`] when the user passed `--force`.
    pub fn forced(force: bool) -> Self {
        if force {
            Self::Replace
        } else {
            Self::Refuse
        }
    }
}

/// Checks that `out` may be written: not a FIFO, device, folder or other non-regular file, not
/// one of `inputs` (files, or folders whose contents are inputs), and not an existing file
/// unless `overwrite` allows it.
pub fn check_output(out: &Path, inputs: &[&Path], overwrite: Overwrite) -> Result<()> {
    let refuse = |message: String| {
        Err(Error::io(
            out,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, message),
        ))
    };
    let existing = match std::fs::symlink_metadata(out) {
        Ok(metadata) => Some(metadata),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io(out, e)),
    };
    if let Some(metadata) = &existing {
        let target = std::fs::metadata(out).map_err(|e| Error::io(out, e))?;
        if !target.is_file() {
            return refuse(format!(
                "is {}; an output must be a regular file",
                describe(&target)
            ));
        }
        if metadata.file_type().is_symlink() {
            return refuse("is a symbolic link; name its target instead".into());
        }
    }
    let resolved = resolve(out)?;
    for input in inputs {
        let Ok(input) = input.canonicalize() else {
            continue;
        };
        if resolved == input || resolved.starts_with(&input) {
            return refuse(format!(
                "is the input {} or inside it; write somewhere else",
                input.display()
            ));
        }
    }
    if existing.is_some() && overwrite == Overwrite::Refuse {
        return refuse("already exists; pass --force to replace it".into());
    }
    Ok(())
}

/// Checks that the folder `out` may be written into: not a file, FIFO or device, not one of
/// `inputs` or inside one, and empty (or absent) unless `overwrite` allows writing among
/// what it holds.
pub fn check_output_dir(out: &Path, inputs: &[&Path], overwrite: Overwrite) -> Result<()> {
    let refuse = |message: String| {
        Err(Error::io(
            out,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, message),
        ))
    };
    let exists = match std::fs::metadata(out) {
        Ok(metadata) if metadata.is_dir() => true,
        Ok(metadata) => {
            return refuse(format!(
                "is {}; an output folder must be a folder",
                describe(&metadata)
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(Error::io(out, e)),
    };
    let resolved = resolve(out)?;
    for input in inputs {
        let Ok(input) = input.canonicalize() else {
            continue;
        };
        if resolved.starts_with(&input) {
            return refuse(format!(
                "is the input {} or inside it; write somewhere else",
                input.display()
            ));
        }
    }
    let occupied = exists
        && std::fs::read_dir(out)
            .map_err(|e| Error::io(out, e))?
            .next()
            .is_some();
    if occupied && overwrite == Overwrite::Refuse {
        return refuse(
            "already holds files; choose an empty or new folder, or pass --force".into(),
        );
    }
    Ok(())
}

/// `path` made absolute with the links of its existing part resolved (the rest need not exist
/// yet), so that two names of one place compare equal.
fn resolve(path: &Path) -> Result<PathBuf> {
    let absolute = std::path::absolute(path).map_err(|e| Error::io(path, e))?;
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    while !existing.exists() {
        let (Some(parent), Some(name)) = (existing.parent(), existing.file_name()) else {
            break;
        };
        rest.push(name.to_owned());
        existing = parent;
    }
    let mut resolved = existing
        .canonicalize()
        .map_err(|e| Error::io(existing, e))?;
    resolved.extend(rest.iter().rev());
    Ok(resolved)
}

/// A file being written beside `target` that becomes `target` on [`AtomicFile::commit`] and
/// is removed if dropped before.
pub struct AtomicFile {
    target: PathBuf,
    partial: PathBuf,
    file: Option<File>,
}

impl AtomicFile {
    /// Starts writing `target`, after [`check_output`] with no inputs.
    pub fn create(target: &Path, overwrite: Overwrite) -> Result<Self> {
        check_output(target, &[], overwrite)?;
        let mut name = target
            .file_name()
            .ok_or_else(|| {
                Error::io(
                    target,
                    std::io::Error::new(std::io::ErrorKind::InvalidInput, "names no file"),
                )
            })?
            .to_os_string();
        name.push(".partial");
        let partial = target.with_file_name(name);
        let file = File::create(&partial).map_err(|e| Error::io(&partial, e))?;
        Ok(Self {
            target: target.to_owned(),
            partial,
            file: Some(file),
        })
    }

    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("present until committed")
    }

    /// Flushes the file to disk and renames it over the target.
    pub fn commit(mut self) -> Result<()> {
        let file = self.file.take().expect("present until committed");
        file.sync_all().map_err(|e| Error::io(&self.partial, e))?;
        drop(file);
        std::fs::rename(&self.partial, &self.target).map_err(|e| Error::io(&self.target, e))
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file().write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file().flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}

/// Writes `bytes` to `target` through an [`AtomicFile`].
pub fn write(target: &Path, bytes: &[u8], overwrite: Overwrite) -> Result<()> {
    let mut out = AtomicFile::create(target, overwrite)?;
    out.write_all(bytes).map_err(|e| Error::io(target, e))?;
    out.commit()
}
