//! `imp::hub::resolve_model` offline, against Hugging Face cache folders built in a tempdir.

use std::fs;
use std::path::{Path, PathBuf};

use imp::hub::{resolve_model, HubOptions};
use imp::Error;

const REPO: &str = "MILVLG/Imp-v1.5-3B-196";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn offline(cache: &Path) -> HubOptions {
    HubOptions {
        cache_dir: Some(cache.to_path_buf()),
        offline: Some(true),
        revision: "main".to_string(),
        progress: false,
    }
}

/// `models--{owner}--{name}/snapshots/{commit}` holding `files`, with `refs/{branch}` pointing at
/// it when `branch` is given.
fn snapshot(cache: &Path, commit: &str, branch: Option<&str>, files: &[(&str, &str)]) -> PathBuf {
    let repo = cache.join("models--MILVLG--Imp-v1.5-3B-196");
    if let Some(branch) = branch {
        fs::create_dir_all(repo.join("refs")).unwrap();
        fs::write(repo.join("refs").join(branch), format!("{commit}\n")).unwrap();
    }
    let dir = repo.join("snapshots").join(commit);
    for (name, content) in files {
        let path = dir.join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }
    dir
}

const SHARDED_INDEX: &str = r#"{"metadata": {"total_size": 8}, "weight_map": {
    "a.weight": "model-00001-of-00002.safetensors",
    "b.weight": "model-00002-of-00002.safetensors",
    "c.weight": "model-00001-of-00002.safetensors"}}"#;

fn model_not_found(result: imp::Result<PathBuf>) -> String {
    match result {
        Err(Error::ModelNotFound { name, message }) => {
            assert_eq!(name, REPO);
            message
        }
        other => panic!("expected ModelNotFound, got {other:?}"),
    }
}

/// Complete snapshots: the files a model needs, in each layout that `resolve_model` accepts.
const COMPLETE_SNAPSHOTS: [(&str, &[(&str, &str)]); 2] = [
    (
        "one safetensors file, tokenizer.json",
        &[
            ("config.json", "{}"),
            ("model.safetensors", ""),
            ("tokenizer.json", "{}"),
        ],
    ),
    (
        "sharded, BPE tokenizer",
        &[
            ("config.json", "{}"),
            ("model.safetensors.index.json", SHARDED_INDEX),
            ("model-00001-of-00002.safetensors", ""),
            ("model-00002-of-00002.safetensors", ""),
            ("vocab.json", "{}"),
            ("merges.txt", ""),
        ],
    ),
];

#[test]
fn complete_snapshots_resolve() {
    for (case, files) in COMPLETE_SNAPSHOTS {
        let cache = tempfile::tempdir().unwrap();
        let dir = snapshot(cache.path(), COMMIT, Some("main"), files);
        let resolved =
            resolve_model(REPO, &offline(cache.path())).unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_eq!(resolved, dir, "{case}");
    }
}

/// A snapshot that lacks files, and what the message then names.
struct Incomplete {
    name: &'static str,
    files: &'static [(&'static str, &'static str)],
    missing: &'static str,
    /// What the message must not name: files that are there.
    not_named: &'static [&'static str],
}

const INCOMPLETE_SNAPSHOTS: [Incomplete; 2] = [
    Incomplete {
        name: "missing shard",
        files: &[
            ("config.json", "{}"),
            ("model.safetensors.index.json", SHARDED_INDEX),
            ("model-00001-of-00002.safetensors", ""),
            ("tokenizer.json", "{}"),
        ],
        missing: "missing: model-00002-of-00002.safetensors.",
        not_named: &["00001"],
    },
    Incomplete {
        name: "half a BPE tokenizer",
        files: &[("model.safetensors", ""), ("vocab.json", "{}")],
        missing: "missing: config.json, merges.txt.",
        not_named: &[],
    },
];

#[test]
fn incomplete_snapshots_name_what_is_missing_and_the_command() {
    for case in &INCOMPLETE_SNAPSHOTS {
        let cache = tempfile::tempdir().unwrap();
        snapshot(cache.path(), COMMIT, Some("main"), case.files);
        let message = model_not_found(resolve_model(REPO, &offline(cache.path())));
        let command = format!(
            "huggingface-cli download {REPO} --cache-dir {}",
            cache.path().display()
        );
        for part in [case.missing, "is incomplete", &command] {
            assert!(
                message.contains(part),
                "{}: no `{part}` in: {message}",
                case.name
            );
        }
        for part in case.not_named {
            assert!(
                !message.contains(part),
                "{}: `{part}` in: {message}",
                case.name
            );
        }
    }
}

#[cfg(unix)]
#[test]
fn dangling_blob_link_counts_as_missing() {
    // The real cache layout: snapshot entries are symlinks into blobs/.
    let cache = tempfile::tempdir().unwrap();
    let dir = snapshot(
        cache.path(),
        COMMIT,
        Some("main"),
        &[("config.json", "{}"), ("tokenizer.json", "{}")],
    );
    std::os::unix::fs::symlink("../../blobs/0badc0de", dir.join("model.safetensors")).unwrap();
    let message = model_not_found(resolve_model(REPO, &offline(cache.path())));
    assert!(
        message.contains("missing: model.safetensors (or"),
        "{message}"
    );

    let blobs = cache.path().join("models--MILVLG--Imp-v1.5-3B-196/blobs");
    fs::create_dir_all(&blobs).unwrap();
    fs::write(blobs.join("0badc0de"), "").unwrap();
    assert_eq!(resolve_model(REPO, &offline(cache.path())).unwrap(), dir);
}

#[test]
fn uncached_repo_names_files_and_command() {
    let cache = tempfile::tempdir().unwrap();
    let options = HubOptions {
        revision: "v2".to_string(),
        ..offline(cache.path())
    };
    let message = model_not_found(resolve_model(REPO, &options));
    for expected in [
        "revision v2",
        "not in the Hugging Face cache",
        "config.json",
        "model.safetensors (or model.safetensors.index.json and its shards)",
        "tokenizer.json (or vocab.json and merges.txt, or tokenizer.model)",
        "huggingface-cli download MILVLG/Imp-v1.5-3B-196 --revision v2 --cache-dir",
        "HF_HUB_OFFLINE",
    ] {
        assert!(message.contains(expected), "no `{expected}` in: {message}");
    }
}

#[test]
fn revision_may_be_a_commit_hash() {
    let cache = tempfile::tempdir().unwrap();
    // No refs at all: a commit hash names the snapshot directly.
    let dir = snapshot(
        cache.path(),
        COMMIT,
        None,
        &[
            ("config.json", "{}"),
            ("model.safetensors", ""),
            ("tokenizer.model", ""),
        ],
    );
    let options = HubOptions {
        revision: COMMIT.to_string(),
        ..offline(cache.path())
    };
    assert_eq!(resolve_model(REPO, &options).unwrap(), dir);
    // ...while `main` has no ref to follow.
    let message = model_not_found(resolve_model(REPO, &offline(cache.path())));
    assert!(message.contains("revision main"), "{message}");
}

#[test]
fn existing_paths_pass_through() {
    let folder = tempfile::tempdir().unwrap();
    // Neither the cache nor the network is consulted.
    let options = HubOptions {
        cache_dir: Some(folder.path().join("no-cache")),
        offline: Some(false),
        ..HubOptions::default()
    };
    let spec = folder.path().to_str().unwrap();
    assert_eq!(resolve_model(spec, &options).unwrap(), folder.path());
    let file = folder.path().join("model.safetensors");
    fs::write(&file, "").unwrap();
    assert_eq!(
        resolve_model(file.to_str().unwrap(), &options).unwrap(),
        file
    );
}

#[test]
fn missing_paths_are_not_repo_ids() {
    let cache = tempfile::tempdir().unwrap();
    for spec in [
        "./models/imp",
        "/nonexistent/imp-model",
        "~/nonexistent-imp-model",
        "models/MILVLG/Imp-v1.5-3B-196",
        "imp-v1.5-3b",
        "../no-such-imp-model",
    ] {
        match resolve_model(spec, &offline(cache.path())) {
            Err(err @ Error::Io { .. }) => {
                assert!(err.to_string().contains("no such model folder"), "{err}")
            }
            other => panic!("{spec}: expected an Io error, got {other:?}"),
        }
    }
}
