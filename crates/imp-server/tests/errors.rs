//! Bad requests get OpenAI-shaped errors with the right status; the API key guards `/v1` routes;
//! settings that cannot work are refused at start-up.

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use serde_json::{json, Value};

use crate::support::{
    app, chelsea, data_url, expect_error, get, image_part, image_path, post, question, send,
    server, MODEL,
};

#[tokio::test]
async fn bad_requests_get_openai_errors_with_the_right_status() {
    let app = app(&[
        "--max-image-bytes",
        "1000000",
        "--max-body-bytes",
        "2000000",
    ]);
    let bad = StatusCode::BAD_REQUEST;
    let url = chelsea();
    let with = |extra: Value| post(question(&url, extra).to_string());
    // A field the request's schema rejects: 400 without a code, naming the field.
    let bad_field = |extra: Value, param: &str| (with(extra), bad, Value::Null, json!(param));
    // An image that cannot be used: 400 with `code`, naming the image's content part.
    let bad_image = |url: &str, extra: Value, code: &str| {
        let request = post(question(url, extra).to_string());
        (request, bad, json!(code), json!("messages[0].content[0]"))
    };
    // (request, status, code, param)
    let cases: Vec<(Request<Body>, StatusCode, Value, Value)> = vec![
        (post("{not json"), bad, Value::Null, Value::Null),
        (post("[1, 2]"), bad, Value::Null, Value::Null),
        (
            post(json!({"model": MODEL}).to_string()),
            bad,
            Value::Null,
            json!("messages"),
        ),
        bad_field(json!({"temperature": "hot"}), "temperature"),
        bad_field(json!({"temperature": 3}), "temperature"),
        bad_field(json!({"max_tokens": 0}), "max_tokens"),
        bad_field(json!({"n": 2}), "n"),
        bad_field(json!({"top_logprobs": 2}), "top_logprobs"),
        bad_field(json!({"messages": "hi"}), "messages"),
        bad_field(json!({"messages": []}), "messages"),
        bad_field(
            json!({"messages": [{"role": "user", "content": 5}]}),
            "messages[0].content",
        ),
        bad_field(
            json!({"messages": [{"role": "tool", "content": "x"}]}),
            "messages[0].role",
        ),
        bad_field(
            json!({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}),
            "messages[0].content[0].type",
        ),
        bad_field(
            json!({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}),
            "messages",
        ),
        bad_field(json!({"response_format": "json"}), "response_format"),
        bad_field(
            json!({"response_format": {"type": "xml"}}),
            "response_format.type",
        ),
        bad_field(
            json!({"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}}),
            "response_format.json_schema.name",
        ),
        bad_field(
            json!({"response_format": {"type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "strin"}}}}),
            "response_format",
        ),
        bad_field(
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x",
                "schema": {"type": "array", "minItems": 3, "maxItems": 1}}}}),
            "response_format",
        ),
        (
            with(json!({"model": "gpt-4o"})),
            StatusCode::NOT_FOUND,
            json!("model_not_found"),
            json!("model"),
        ),
        bad_image(
            "data:image/png;base64,!!!notbase64",
            json!({}),
            "invalid_image_url",
        ),
        bad_image(
            &data_url(b"these bytes are not an image"),
            json!({}),
            "invalid_image",
        ),
        bad_image(
            &data_url(b"not an image"),
            json!({"stream": true}),
            "invalid_image",
        ),
        bad_image(
            &data_url(&vec![0u8; 1_200_000]),
            json!({}),
            "image_too_large",
        ),
        bad_image("file:///etc/passwd", json!({}), "file_urls_disabled"),
        bad_image(
            "https://example.com/cat.png",
            json!({}),
            "remote_images_disabled",
        ),
        (
            with(
                json!({"messages": [{"role": "user", "content": [image_part(&url), image_part(&url)]}]}),
            ),
            bad,
            json!("too_many_images"),
            json!("messages[0].content"),
        ),
        (
            with(json!({"messages": [{"role": "user", "content": "word ".repeat(3000)}]})),
            bad,
            json!("context_length_exceeded"),
            json!("messages"),
        ),
        (
            post(question(&data_url(&vec![0u8; 1_600_000]), json!({})).to_string()),
            StatusCode::PAYLOAD_TOO_LARGE,
            json!("request_too_large"),
            Value::Null,
        ),
        (
            get("/v1/nothing"),
            StatusCode::NOT_FOUND,
            json!("unknown_url"),
            Value::Null,
        ),
        (
            get("/v1/chat/completions"),
            StatusCode::METHOD_NOT_ALLOWED,
            json!("method_not_allowed"),
            Value::Null,
        ),
    ];
    for (request, status, code, param) in cases {
        expect_error(&app, request, status, code, param).await;
    }
    // Every failure was answered, none with a server error.
    let (_, metrics) = send(&app, get("/metrics")).await;
    assert!(!metrics.contains("status=\"500\""), "{metrics}");
}

#[tokio::test]
async fn the_api_key_guards_v1_routes_but_not_health() {
    let app = app(&["--api-key", "sesame"]);
    let body = question(&chelsea(), json!({})).to_string();
    for (authorization, accepted) in [
        (None, false),
        (Some("Bearer open"), false),
        (Some("Bearer sesame"), true),
    ] {
        let mut request = post(body.clone());
        if let Some(value) = authorization {
            request
                .headers_mut()
                .insert(header::AUTHORIZATION, value.parse().unwrap());
        }
        if accepted {
            assert_eq!(send(&app, request).await.0, StatusCode::OK);
        } else {
            let code = json!("invalid_api_key");
            expect_error(&app, request, StatusCode::UNAUTHORIZED, code, Value::Null).await;
        }
    }
    assert_eq!(
        send(&app, get("/health")).await,
        (StatusCode::OK, r#"{"status":"ok"}"#.into())
    );
}

#[test]
fn settings_that_cannot_work_are_refused_at_start_up() {
    let missing = image_path().with_file_name("no such folder");
    for (args, complaint) in [
        (vec!["--api-key", ""], "--api-key"),
        (vec!["--api-key", "  "], "--api-key"),
        (
            vec!["--allow-files", image_path().to_str().unwrap()],
            "not a folder",
        ),
        (
            vec!["--allow-files", missing.to_str().unwrap()],
            "--allow-files",
        ),
        (vec!["--request-timeout", "0"], "positive number of seconds"),
    ] {
        let error = server(&args).err().map(|e| format!("{e:#}"));
        assert!(
            error.as_ref().is_some_and(|e| e.contains(complaint)),
            "{args:?}: {error:?}"
        );
    }
}
