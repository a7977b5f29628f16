//! Queueing beyond `--parallel`, `--queue`'s limit, and cancellation when a client goes away.

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
