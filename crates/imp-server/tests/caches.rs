//! The image cache (memory, then the `--cache-dir` disk tier: bounded, least recently used out
//! first, and switched off rather than failing requests when it cannot be written) and the
//! conversation KV cache.

use std::path::{Path, PathBuf};

use axum::http::StatusCode;
use axum::Router;
use serde_json::json;

use crate::support::{
    app, chat, chelsea, data_url, fixtures, image_part, metric, question, MODEL, QUESTION,
};

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

fn fixture_image(name: &str) -> String {
    data_url(&std::fs::read(fixtures().join("images").join(name)).unwrap())
}

/// The one folder `--cache-dir` holds: this model's.
fn model_cache(dir: &Path) -> PathBuf {
    let mut folders: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(folders.len(), 1, "{folders:?}");
    folders.pop().unwrap()
}

fn cached_files(dir: &Path) -> usize {
    std::fs::read_dir(model_cache(dir))
        .unwrap()
        .filter(|e| {
            let path = e.as_ref().unwrap().path();
            path.extension().is_some_and(|e| e == "safetensors")
        })
        .count()
}

async fn ask(app: &Router, url: &str) {
    let (status, reply) = chat(app, &question(url, json!({}))).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
}

#[tokio::test]
async fn the_disk_cache_stays_within_its_bound_dropping_the_least_recently_used() {
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = dir.path().to_str().unwrap();
    let (chelsea, coins, hopper) = (
        chelsea(),
        fixture_image("skimage_coins.png"),
        fixture_image("pillow_hopper.jpg"),
    );
    // Without memory tier, every repeat goes to disk.
    let unbounded = app(&["--cache-dir", cache_dir, "--image-cache", "0"]);
    ask(&unbounded, &chelsea).await;
    let entry = metric(&unbounded, "imp_image_cache_disk_bytes").await;
    assert!(entry > 0.0);
    // Room for two entries; the index of what is on disk is rebuilt at start.
    let bound = (entry * 2.5) as u64;
    let bounded = app(&[
        "--cache-dir",
        cache_dir,
        "--image-cache",
        "0",
        "--cache-max-bytes",
        &bound.to_string(),
    ]);
    assert_eq!(metric(&bounded, "imp_image_cache_disk_bytes").await, entry);
    ask(&bounded, &coins).await;
    ask(&bounded, &chelsea).await;
    // Coins is now the least recently used: the third entry pushes it out.
    ask(&bounded, &hopper).await;
    assert!(metric(&bounded, "imp_image_cache_disk_bytes").await <= bound as f64);
    assert_eq!(cached_files(dir.path()), 2);
    let disk_hits = "imp_image_cache_hits_total{tier=\"disk\"}";
    assert_eq!(metric(&bounded, disk_hits).await, 1.0);
    ask(&bounded, &chelsea).await;
    ask(&bounded, &hopper).await;
    assert_eq!(metric(&bounded, disk_hits).await, 3.0);
    assert_eq!(metric(&bounded, "imp_image_cache_misses_total").await, 2.0);
    ask(&bounded, &coins).await;
    assert_eq!(metric(&bounded, "imp_image_cache_misses_total").await, 3.0);
    assert_eq!(cached_files(dir.path()), 2);
}

#[tokio::test]
async fn an_unwritable_cache_dir_switches_the_disk_cache_off_without_failing_requests() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let app = app(&["--cache-dir", dir.path().to_str().unwrap()]);
    assert_eq!(metric(&app, "imp_image_cache_disk_enabled").await, 1.0);
    let folder = model_cache(dir.path());
    let mode = |m| std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(m));
    mode(0o555).unwrap();
    // Root writes into read-only folders: then the folder becomes a file, where no one can.
    let probe = folder.join("probe");
    if std::fs::write(&probe, b"").is_ok() {
        mode(0o755).unwrap();
        std::fs::remove_dir_all(&folder).unwrap();
        std::fs::write(&folder, b"not a folder").unwrap();
    }
    ask(&app, &chelsea()).await;
    assert_eq!(metric(&app, "imp_image_cache_disk_enabled").await, 0.0);
    ask(&app, &fixture_image("skimage_coins.png")).await;
    ask(&app, &chelsea()).await;
    assert_eq!(
        metric(&app, "imp_image_cache_hits_total{tier=\"memory\"}").await,
        1.0
    );
    let _ = mode(0o755);
}
