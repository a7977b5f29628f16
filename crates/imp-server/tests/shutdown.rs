//! Graceful shutdown (SIGTERM, Ctrl-C): the generation in flight finishes, the queued request
//! is answered 503, no new connection is taken, and the server returns.

use std::io::Write;
use std::time::Duration;

use serde_json::json;

use crate::support::{
    assert_error_code, blocking, chelsea, long_body, question, raw_post, read_response,
    wait_for_metric, Served,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_the_request_in_flight_and_refuses_the_queued_one() {
    let served = Served::start(&["--parallel", "1", "--grace-period", "600"]).await;
    let mut running = served.connect();
    let mut queued = served.connect();
    // Long enough to be still running when the signal comes, short enough to finish: a loaded
    // machine may need more than the usual 20 s of patience for it.
    let body = question(&chelsea(), json!({"max_tokens": 1000})).to_string();
    let running = blocking(move || {
        running.write_all(&raw_post(&body)).unwrap();
        running
            .set_read_timeout(Some(Duration::from_secs(300)))
            .unwrap();
        running
    })
    .await;
    wait_for_metric(&served.app, "imp_running", 1.0).await;
    let queued = blocking(move || {
        queued.write_all(&raw_post(&long_body(true))).unwrap();
        queued
    })
    .await;
    wait_for_metric(&served.app, "imp_queue_length", 1.0).await;
    let address = served.address;
    let replies = tokio::spawn(blocking(move || {
        let (mut running, mut queued) = (running, queued);
        (read_response(&mut queued), read_response(&mut running))
    }));
    served.shut_down().await.unwrap();
    let ((queued_status, queued_body), (status, body)) = replies.await.unwrap();
    assert_eq!(queued_status, 503, "{queued_body}");
    assert_error_code(&queued_body, "shutting_down");
    assert_eq!(status, 200, "{body}");
    let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(reply["choices"][0]["finish_reason"].is_string(), "{reply}");
    assert!(std::net::TcpStream::connect(address).is_err());
}
