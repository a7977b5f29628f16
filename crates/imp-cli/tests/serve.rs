//! `imp serve` as a process: SIGTERM while a streamed answer is being generated lets it finish,
//! then the server exits 0.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{arg, model};

#[test]
fn sigterm_lets_the_answer_in_flight_finish_and_exits_zero() {
    let mut server = Command::new(env!("CARGO_BIN_EXE_imp"))
        .args(["serve", "--model", arg(&model("imp-v1-3b")), "--port", "0"])
        .env("HF_HUB_OFFLINE", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = BufReader::new(server.stderr.take().unwrap());
    let mut started = String::new();
    log.read_line(&mut started).unwrap();
    let address = started
        .trim()
        .rsplit_once("on http://")
        .unwrap_or_else(|| panic!("no address in `{started}`"))
        .1
        .to_owned();

    let body = serde_json::json!({
        "model": "imp-v1-3b",
        "stream": true,
        "max_tokens": 200,
        "messages": [{"role": "user", "content": "Tell me a long story."}],
    })
    .to_string();
    let mut connection = TcpStream::connect(&address).unwrap();
    connection
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    write!(
        connection,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: imp\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // The first streamed event: the generation is running.
    let mut reply = BufReader::new(connection);
    let mut received = String::new();
    while !received.contains("data: ") {
        assert_ne!(reply.read_line(&mut received).unwrap(), 0, "{received}");
    }
    let terminated = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(terminated.success());

    reply.read_to_string(&mut received).unwrap();
    assert!(received.starts_with("HTTP/1.1 200"), "{received}");
    assert!(received.contains("data: [DONE]"), "{received}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = server.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "imp serve still running after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut rest = String::new();
    log.read_to_string(&mut rest).unwrap();
    assert!(status.success(), "exit {status}: {rest}");
}
