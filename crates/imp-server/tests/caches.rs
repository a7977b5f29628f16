//! The image cache (memory, then the `--cache-dir` disk tier) and the conversation KV cache.

use axum::http::StatusCode;
use serde_json::json;

use crate::support::{app, chat, chelsea, image_part, metric, question, MODEL, QUESTION};

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
