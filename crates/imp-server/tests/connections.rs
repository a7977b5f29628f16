//! Connections over loopback: stalled clients are closed (headers, body, idle), an oversized
//! Content-Length is refused before its body, a request in progress outlives those timers,
//! and `--max-connections` holds further clients in the backlog.

use std::io::Write;
use std::time::Duration;

use crate::support::{
    assert_closed, assert_error_code, blocking, long_body, raw_post, read_response, Served,
};

const HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nHost: imp\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_header_is_closed_after_the_header_timeout() {
    // The idle timeout is longer than the client's patience: only the header timer can close.
    let served = Served::start(&["--header-timeout", "0.3", "--idle-timeout", "60"]).await;
    let mut stream = served.connect();
    blocking(move || {
        stream
            .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: imp\r\n")
            .unwrap();
        assert_closed(&mut stream);
    })
    .await;
    served.shut_down().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_after_the_idle_timeout() {
    let served = Served::start(&["--idle-timeout", "0.3", "--header-timeout", "60"]).await;
    let mut fresh = served.connect();
    blocking(move || assert_closed(&mut fresh)).await;
    // After a request, too.
    let mut kept_alive = served.connect();
    blocking(move || {
        kept_alive.write_all(HEALTH).unwrap();
        assert_eq!(read_response(&mut kept_alive).0, 200);
        assert_closed(&mut kept_alive);
    })
    .await;
    served.shut_down().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_comes_is_answered_408_and_closed() {
    let served = Served::start(&["--body-timeout", "0.3"]).await;
    let mut stream = served.connect();
    blocking(move || {
        stream
            .write_all(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: imp\r\nContent-Length: 100\r\n\r\n{",
            )
            .unwrap();
        let (status, body) = read_response(&mut stream);
        assert_eq!(status, 408, "{body}");
        assert_error_code(&body, "body_timeout");
        assert_closed(&mut stream);
    })
    .await;
    served.shut_down().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_content_length_over_the_limit_is_refused_before_the_body() {
    // The body timeout is longer than the client's patience: the 413 comes from the header.
    let served = Served::start(&["--max-body-bytes", "1000", "--body-timeout", "60"]).await;
    let mut stream = served.connect();
    blocking(move || {
        stream
            .write_all(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: imp\r\nContent-Type: application/json\r\n\
                  Expect: 100-continue\r\nContent-Length: 1000000000000\r\n\r\n",
            )
            .unwrap();
        let (status, body) = read_response(&mut stream);
        assert_eq!(status, 413, "{body}");
        assert_error_code(&body, "request_too_large");
    })
    .await;
    served.shut_down().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_progress_outlives_the_connection_timers() {
    // The generation runs until the request timeout, well past the idle and header timeouts.
    let served = Served::start(&[
        "--idle-timeout",
        "0.1",
        "--header-timeout",
        "0.1",
        "--request-timeout",
        "1",
    ])
    .await;
    let mut stream = served.connect();
    blocking(move || {
        stream.write_all(&raw_post(&long_body(false))).unwrap();
        let (status, body) = read_response(&mut stream);
        assert_eq!(status, 504, "{body}");
        assert_error_code(&body, "request_timeout");
    })
    .await;
    served.shut_down().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_wait_until_one_closes() {
    let served = Served::start(&["--max-connections", "1"]).await;
    let mut first = served.connect();
    let mut second = served.connect();
    blocking(move || {
        first.write_all(HEALTH).unwrap();
        assert_eq!(read_response(&mut first).0, 200);
        // Connected (the kernel's backlog took it) but not served while `first` is open.
        second.write_all(HEALTH).unwrap();
        second
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut byte = [0u8];
        let waiting = std::io::Read::read(&mut second, &mut byte);
        assert!(
            waiting.as_ref().is_err_and(|e| matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            )),
            "{waiting:?}"
        );
        drop(first);
        second
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        assert_eq!(read_response(&mut second).0, 200);
    })
    .await;
    served.shut_down().await.unwrap();
}
