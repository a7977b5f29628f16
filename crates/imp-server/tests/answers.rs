//! Answers, whole and streamed, equal the library's, within `response_format` when given, with
//! their timings; `/v1/models` lists the served model; the chat page is served unless turned off.

use axum::http::StatusCode;
use imp::SamplingParams;
use serde_json::{json, Value};

use crate::support::{app, chat, chelsea, get, post, question, reference, send, MODEL};

#[tokio::test]
async fn plain_answer_equals_the_library() {
    let app = app(&[]);
    let sampling = SamplingParams {
        temperature: 0.8,
        top_p: Some(0.9),
        seed: 7,
        ..Default::default()
    };
    let expected = reference(sampling, 12);
    let body = question(
        &chelsea(),
        json!({"temperature": 0.8, "top_p": 0.9, "seed": 7, "max_tokens": 12, "logprobs": true, "top_logprobs": 3}),
    );
    let (status, reply) = chat(&app, &body).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let choice = &reply["choices"][0];
    assert_eq!(reply["object"], "chat.completion");
    assert_eq!(choice["message"]["content"], expected.text.as_str());
    assert_eq!(choice["finish_reason"], expected.finish_reason.as_str());
    assert_eq!(reply["usage"]["prompt_tokens"], expected.prompt_tokens);
    assert_eq!(reply["usage"]["completion_tokens"], expected.tokens.len());
    let logprobs = choice["logprobs"]["content"].as_array().unwrap();
    assert_eq!(logprobs.len(), expected.tokens.len());
    for (ours, (own, top)) in logprobs
        .iter()
        .zip(expected.logprobs.iter().zip(&expected.top_logprobs))
    {
        assert!((ours["logprob"].as_f64().unwrap() - f64::from(*own)).abs() < 1e-5);
        let alternatives = ours["top_logprobs"].as_array().unwrap();
        assert_eq!(alternatives.len(), 3);
        assert!((alternatives[0]["logprob"].as_f64().unwrap() - f64::from(top[0].1)).abs() < 1e-5);
    }
}

/// The `data:` payloads of an event stream.
fn sse_data(text: &str) -> Vec<&str> {
    text.split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .collect()
}

#[tokio::test]
async fn streamed_chunks_add_up_to_the_answer_and_end_with_usage_and_done() {
    let app = app(&[]);
    let expected = reference(SamplingParams::default(), 10);
    let body = question(
        &chelsea(),
        json!({"stream": true, "max_tokens": 10, "stream_options": {"include_usage": true}}),
    );
    let (status, text) = send(&app, post(body.to_string())).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let data = sse_data(&text);
    assert_eq!(data.last(), Some(&"[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content.trim_end(), expected.text);
    let finish = &chunks[chunks.len() - 2]["choices"][0]["finish_reason"];
    assert_eq!(finish, expected.finish_reason.as_str());
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["completion_tokens"], expected.tokens.len());
    assert_eq!(usage["prompt_tokens"], expected.prompt_tokens);
    let timings = &chunks.last().unwrap()["timings"];
    assert_eq!(timings["decode_tokens"], expected.timings.decode_steps);
    let ttft = timings["time_to_first_token_ms"].as_f64().unwrap();
    assert!(ttft >= timings["prefill_ms"].as_f64().unwrap(), "{timings}");
}

#[tokio::test]
async fn response_format_answers_are_the_library_s_constrained_answers() {
    let app = app(&[]);
    let schema = json!({
        "type": "object",
        "properties": {"animal": {"enum": ["cat", "dog"]}, "lives": {"type": "integer", "minimum": 1, "maximum": 9}},
        "required": ["animal", "lives"],
        "additionalProperties": false,
    });
    let model = crate::support::model();
    let sampling = SamplingParams {
        temperature: 0.9,
        seed: 11,
        ..Default::default()
    };
    for (format, constraint) in [
        (
            json!({"type": "json_schema", "json_schema": {"name": "cat", "schema": schema}}),
            imp::Constraint::JsonSchema(schema.clone()),
        ),
        (json!({"type": "json_object"}), imp::Constraint::JsonObject),
    ] {
        let expected = imp::generate(
            &model,
            &imp::Prompt::Question(crate::support::QUESTION.into()),
            &[imp::load_rgb(&crate::support::image_path()).unwrap()],
            &imp::GenerationOptions {
                max_new_tokens: 60,
                sampling: sampling.clone(),
                grammar: Some(model.compile_constraint(&constraint).unwrap()),
                ..Default::default()
            },
            &mut |_| {},
        )
        .unwrap();
        let body = question(
            &chelsea(),
            json!({"temperature": 0.9, "seed": 11, "max_tokens": 60, "response_format": format}),
        );
        let (status, reply) = chat(&app, &body).await;
        assert_eq!(status, StatusCode::OK, "{reply}");
        let choice = &reply["choices"][0];
        assert_eq!(choice["message"]["content"], expected.text.as_str());
        assert_eq!(choice["finish_reason"], expected.finish_reason.as_str());
    }
}

#[tokio::test]
async fn the_chat_page_is_served_at_the_root_unless_turned_off() {
    let app = app(&[]);
    for (path, content_type, marker) in [
        ("/", "text/html", "<script src=\"/webui/app.js\""),
        ("/webui/app.js", "text/javascript", "/v1/chat/completions"),
        ("/webui/app.css", "text/css", "#drop-overlay"),
    ] {
        let response = tower::ServiceExt::oneshot(app.clone(), get(path))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let headers = response.headers();
        assert!(headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with(content_type));
        assert!(headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'self'"));
        let (_, body) = send(&app, get(path)).await;
        assert!(body.contains(marker), "{path}");
    }
    let api_only = crate::support::app(&["--no-webui"]);
    assert_eq!(send(&api_only, get("/")).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        send(&api_only, get("/webui/app.js")).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn models_lists_the_served_model() {
    let app = app(&[]);
    let (status, text) = send(&app, get("/v1/models")).await;
    assert_eq!(status, StatusCode::OK);
    let list: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(list["data"][0]["id"], MODEL);
    assert_eq!(
        send(&app, get(&format!("/v1/models/{MODEL}"))).await.0,
        StatusCode::OK
    );
}
