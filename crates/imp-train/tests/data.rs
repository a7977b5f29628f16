//! The LLaVA reader's checks: each bad input is an error that names the sample and the problem.

use std::path::Path;

use imp_train::data::{self, Format, Role};
use imp_train::Error;

fn turns(turns: &[(&str, &str)]) -> String {
    let turns: Vec<String> = turns
        .iter()
        .map(|(from, value)| serde_json::json!({"from": from, "value": value}).to_string())
        .collect();
    format!("[{}]", turns.join(", "))
}

fn sample(image: Option<&str>, conversation: &[(&str, &str)]) -> String {
    let image = image
        .map(|i| format!(r#""image": "{i}", "#))
        .unwrap_or_default();
    format!(
        r#"{{"id": "s1", {image}"conversations": {}}}"#,
        turns(conversation)
    )
}

fn parse_error(text: &str, format: Format) -> String {
    match data::parse(text, format, Path::new("train.json")) {
        Err(Error::Data { path, message }) => {
            assert_eq!(path, Path::new("train.json"));
            message
        }
        Err(other) => panic!("not a data error: {other}"),
        Ok(samples) => panic!("accepted: {samples:?}"),
    }
}

fn list_error(samples: &[String]) -> String {
    parse_error(&format!("[{}]", samples.join(",\n")), Format::Json)
}

const GOOD: Turns = &[("human", "Hi?"), ("gpt", "Hello.")];

fn assert_mentions(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(message.contains(part), "{message:?} lacks {part:?}");
    }
}

#[test]
fn json_and_json_lines_read_alike() {
    let one = sample(
        Some("a.png"),
        &[("human", "What? <image>"), ("gpt", "A cat.")],
    );
    let two = sample(None, GOOD);
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("train.json");
    std::fs::write(&json, format!("[{one},\n{two}]")).expect("write");
    let jsonl = dir.path().join("train.jsonl");
    std::fs::write(&jsonl, format!("{one}\n\n{two}\n")).expect("write");
    let objects_in_json = dir.path().join("lines.json");
    std::fs::write(&objects_in_json, format!("  {one}\n{two}")).expect("write");
    let a = data::read(&json).expect("json");
    assert_eq!(a, data::read(&jsonl).expect("jsonl"));
    assert_eq!(
        a,
        data::read(&objects_in_json).expect("json lines in .json")
    );
    assert_eq!(a[0].image.as_deref(), Some("a.png"));
    assert_eq!(a[0].conversations[0].value, "<image>\nWhat?");
    assert_eq!(a[0].conversations[1].from, Role::Gpt);
    assert_eq!(a[1].image, None);
}

#[test]
fn ids_may_be_numbers_or_absent() {
    let text = r#"[{"id": 7, "conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]},
                   {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]}]"#;
    let samples = data::parse(text, Format::Json, Path::new("x")).expect("parses");
    assert_eq!(samples[0].id, "7");
    assert_eq!(samples[1].id, "1");
}

#[test]
fn a_leading_gpt_turn_is_dropped() {
    let text = format!(
        "[{}]",
        sample(None, &[("gpt", "Intro."), ("human", "Q"), ("gpt", "A")])
    );
    let samples = data::parse(&text, Format::Json, Path::new("x")).expect("parses");
    assert_eq!(samples[0].conversations.len(), 2);
    assert_eq!(samples[0].conversations[0].from, Role::Human);
}

#[test]
fn bad_json_names_the_sample() {
    let good = sample(None, GOOD);
    let message = parse_error(
        &format!("[{good}, {{\"id\": \"x\", \"conversations\": 3}}]"),
        Format::Json,
    );
    assert_mentions(&message, &["sample 1", "invalid type"]);
    let message = parse_error(&format!("[{good}, {{\"id\": \"x\"}}]"), Format::Json);
    assert_mentions(&message, &["sample 1", "conversations"]);
    let message = parse_error("[{\"id\": ", Format::Json);
    assert_mentions(&message, &["sample 0", "EOF"]);
    let message = parse_error("{\"a\": 1}", Format::Json);
    assert_mentions(&message, &["expected a JSON list"]);
    let message = parse_error(&format!("[{good}] x"), Format::Json);
    assert_mentions(&message, &["after the list"]);
    let message = parse_error(&format!("{good}\n{{oops\n"), Format::JsonLines);
    assert_mentions(&message, &["line 2", "sample 1"]);
    let message = parse_error("[]", Format::Json);
    assert_mentions(&message, &["no samples"]);
}

/// A bad sample: its image field, its turns, and what the error must say.
type BadSample = (Option<&'static str>, Turns, &'static [&'static str]);
type Turns = &'static [(&'static str, &'static str)];

#[test]
fn conversation_errors_name_the_problem() {
    let cases: &[BadSample] = &[
        (None, &[], &["sample 0 (id \"s1\")", "empty"]),
        (None, &[("gpt", "A")], &["only turn is a gpt turn"]),
        (
            None,
            &[("human", "Q"), ("human", "Q2")],
            &["turn 1", "alternate"],
        ),
        (
            None,
            &[("human", "Q"), ("gpt", "A"), ("gpt", "B")],
            &["turn 2", "alternate"],
        ),
        (
            None,
            &[("human", "Q"), ("gpt", "A"), ("human", "Q2")],
            &["without an answer"],
        ),
        (
            None,
            &[("user", "Q"), ("gpt", "A")],
            &["unknown role \"user\""],
        ),
        (
            None,
            &[("human", "Q"), ("gpt", "")],
            &["turn 1 (gpt) is empty"],
        ),
        (
            None,
            &[("human", "<image>\nQ"), ("gpt", "A")],
            &["no `image`", "text-only"],
        ),
        (
            Some("a.png"),
            GOOD,
            &["\"a.png\"", "no turn has the <image> marker"],
        ),
        (
            Some("a.png"),
            &[("human", "<image> <image> Q"), ("gpt", "A")],
            &["2 <image> markers", "exactly one"],
        ),
        (
            Some("a.png"),
            &[
                ("human", "<image>"),
                ("gpt", "A"),
                ("human", "<image>"),
                ("gpt", "B"),
            ],
            &["2 <image> markers"],
        ),
        (
            Some("a.png"),
            &[("human", "Q"), ("gpt", "<image> A")],
            &["in turn 1", "first human turn"],
        ),
        (Some(" "), GOOD, &["`image` is empty"]),
    ];
    for (image, conversation, parts) in cases {
        let message = list_error(&[sample(*image, conversation)]);
        assert_mentions(&message, parts);
    }
    // The second sample is the bad one.
    let message = list_error(&[sample(None, GOOD), sample(None, &[("human", "Q")])]);
    assert_mentions(&message, &["sample 1 (id \"s1\")"]);
    let message = parse_error(
        r#"[{"id": "x", "image": 3, "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "A"}]}]"#,
        Format::Json,
    );
    assert_mentions(&message, &["`image` must be a file name"]);
}

#[test]
fn files_that_are_not_data_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let error = data::read(dir.path()).expect_err("a folder");
    assert!(error.to_string().contains("not a regular file"), "{error}");

    let error = data::read(&dir.path().join("missing.json")).expect_err("missing");
    assert!(error.to_string().contains("No such file"), "{error}");

    // A FIFO without a writer is refused at once instead of blocking the read.
    let fifo = dir.path().join("fifo.json");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    assert!(made.is_ok_and(|s| s.success()), "mkfifo");
    let error = data::read(&fifo).expect_err("a FIFO");
    assert!(error.to_string().contains("is a FIFO"), "{error}");

    let big = dir.path().join("big.json");
    std::fs::write(&big, format!("[{}]", sample(None, GOOD))).expect("write");
    let error = data::read_limited(&big, 10).expect_err("over the cap");
    assert!(
        error.to_string().contains("more than the 10 bytes"),
        "{error}"
    );

    let empty = dir.path().join("empty.json");
    std::fs::write(&empty, "  \n").expect("write");
    let error = data::read(&empty).expect_err("empty");
    assert!(error.to_string().contains("empty"), "{error}");

    let csv = dir.path().join("train.csv");
    std::fs::write(&csv, "id,text\n").expect("write");
    let error = data::read(&csv).expect_err("csv");
    assert!(error.to_string().contains("neither a JSON list"), "{error}");

    let binary = dir.path().join("bin.json");
    std::fs::write(&binary, b"[\xff]").expect("write");
    let error = data::read(&binary).expect_err("not UTF-8");
    assert!(error.to_string().contains("not UTF-8"), "{error}");
}
