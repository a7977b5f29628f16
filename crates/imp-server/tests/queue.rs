//! Queueing beyond `--parallel`, `--queue`'s limit, cancellation when a client goes away, and
//! `--request-timeout`.

use axum::http::StatusCode;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::support::{
    app, chat, chelsea, expect_error, long_request, metric, question, wait_for_metric,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_queue_get_429_and_waiting_ones_can_leave() {
    let app = app(&["--parallel", "1", "--queue", "1"]);
    let running = tokio::spawn(app.clone().oneshot(long_request(false)));
    wait_for_metric(&app, "imp_running", 1.0).await;
    let queued = tokio::spawn(app.clone().oneshot(long_request(false)));
    wait_for_metric(&app, "imp_queue_length", 1.0).await;
    expect_error(
        &app,
        long_request(false),
        StatusCode::TOO_MANY_REQUESTS,
        json!("queue_full"),
        Value::Null,
    )
    .await;
    // Clients that go away free their place in the queue and their slot.
    queued.abort();
    wait_for_metric(&app, "imp_queue_length", 0.0).await;
    running.abort();
    wait_for_metric(&app, "imp_running", 0.0).await;
    assert_eq!(metric(&app, "imp_requests_cancelled_total").await, 1.0);
    assert_eq!(
        chat(&app, &question(&chelsea(), json!({}))).await.0,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_a_stream_cancels_its_generation() {
    let app = app(&["--parallel", "1"]);
    let response = app.clone().oneshot(long_request(true)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.data_ref().is_some_and(|d| d.starts_with(b"data: ")));
    drop(body);
    wait_for_metric(&app, "imp_requests_cancelled_total", 1.0).await;
    wait_for_metric(&app, "imp_running", 0.0).await;
    assert_eq!(metric(&app, "imp_completion_tokens_total").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_the_request_timeout_gets_504_and_frees_its_worker() {
    let app = app(&["--parallel", "1", "--request-timeout", "0.5"]);
    expect_error(
        &app,
        long_request(false),
        StatusCode::GATEWAY_TIMEOUT,
        json!("request_timeout"),
        Value::Null,
    )
    .await;
    wait_for_metric(&app, "imp_running", 0.0).await;
    assert_eq!(metric(&app, "imp_requests_cancelled_total").await, 1.0);
    assert_eq!(
        metric(&app, "imp_requests_total{status=\"504\"}").await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_past_the_request_timeout_ends_with_an_error_event() {
    let app = app(&["--parallel", "1", "--request-timeout", "0.5"]);
    let response = app.clone().oneshot(long_request(true)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(body.to_vec()).unwrap();
    let last = text
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .next_back()
        .unwrap();
    let error: Value = serde_json::from_str(last).unwrap();
    assert_eq!(error["error"]["code"], "request_timeout", "{text}");
    assert!(!text.contains("[DONE]"));
    wait_for_metric(&app, "imp_running", 0.0).await;
    assert_eq!(metric(&app, "imp_requests_cancelled_total").await, 1.0);
}
