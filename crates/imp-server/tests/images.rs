//! Images from `file://` URLs (inside `--allow-files` only, regular files within
//! `--max-image-bytes` only) and from the network (`--allow-remote-images`).

use axum::http::StatusCode;
use axum::Router;
use serde_json::json;

use crate::support::{
    app, assert_answers_like_the_library, chat, fixtures, image_path, question, MODEL,
};

#[tokio::test]
async fn file_urls_are_read_only_inside_the_allowed_folder() {
    let images = fixtures().join("images");
    let app = app(&["--allow-files", images.to_str().unwrap()]);
    let inside = format!("file://{}", image_path().display());
    assert_answers_like_the_library(&app, &inside).await;
    let escape = format!("file://{}/../models/{MODEL}/config.json", images.display());
    let (status, reply) = chat(&app, &question(&escape, json!({}))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{reply}");
    assert_eq!(reply["error"]["code"], "image_path_forbidden");
    assert_eq!(reply["error"]["param"], "messages[0].content[0]");
}

#[tokio::test]
async fn a_fifo_or_an_oversized_file_in_the_allowed_folder_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe.png");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    assert!(made.is_ok_and(|s| s.success()), "mkfifo");
    let big = dir.path().join("big.png");
    std::fs::write(&big, vec![0u8; 2000]).unwrap();
    let app = app(&[
        "--allow-files",
        dir.path().to_str().unwrap(),
        "--max-image-bytes",
        "1000",
    ]);
    // No writer ever opens the FIFO: a blocking read would hang this test.
    let (status, reply) = chat(
        &app,
        &question(&format!("file://{}", fifo.display()), json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{reply}");
    assert_eq!(reply["error"]["code"], "invalid_image_url");
    assert!(
        reply["error"]["message"].as_str().unwrap().contains("FIFO"),
        "{reply}"
    );
    let (status, reply) = chat(
        &app,
        &question(&format!("file://{}", big.display()), json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{reply}");
    assert_eq!(reply["error"]["code"], "image_too_large");
}

/// A loopback server that serves the fixture image, for `--allow-remote-images`.
#[tokio::test]
async fn remote_images_are_fetched_when_allowed() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let png = std::fs::read(image_path()).unwrap();
    let images = Router::new().route("/cat.png", axum::routing::get(move || async move { png }));
    let server = tokio::spawn(async move { axum::serve(listener, images).await });
    let app = app(&["--allow-remote-images"]);
    assert_answers_like_the_library(&app, &format!("http://{address}/cat.png")).await;
    let (status, reply) = chat(
        &app,
        &question(&format!("http://{address}/missing.png"), json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{reply}");
    assert_eq!(reply["error"]["code"], "invalid_image_url");
    server.abort();
}
