//! OpenAI-shaped chat messages read into turns, image references and `data:` URL bytes.

use imp::messages::{decode_data_url, ChatMessages, DataUrlError, ImageRef, ImageUrl};
use imp::Turn;
use serde_json::{json, Value};

fn parse(messages: Value) -> Result<ChatMessages, imp::messages::MessageError> {
    ChatMessages::parse(messages.as_array().unwrap())
}

#[test]
fn messages_pair_into_turns_with_image_markers() {
    let messages = parse(json!([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}},
            {"type": "text", "text": "What is it?"},
        ]},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": "And the colour?"},
        {"role": "user", "content": [{"type": "image_url", "image_url": "file:///b.png"}]},
    ]))
    .unwrap();
    assert_eq!(messages.system.as_deref(), Some("Be brief."));
    assert_eq!(
        messages.turns,
        vec![
            Turn {
                user: "<image>\nWhat is it?".into(),
                assistant: Some("A cat.".into()),
            },
            Turn::question("And the colour?\n<image>\n"),
        ]
    );
    assert_eq!(
        messages.images,
        vec![
            ImageRef {
                url: "data:image/png;base64,AA==".into(),
                param: "messages[1].content[0]".into(),
            },
            ImageRef {
                url: "file:///b.png".into(),
                param: "messages[4].content[0]".into(),
            },
        ]
    );
}

#[test]
fn bad_messages_name_the_field_at_fault() {
    let image = json!({"type": "image_url", "image_url": {"url": "data:,"}});
    let cases = [
        (json!([]), "messages", "at least one message"),
        (
            json!([{"content": "hi"}]),
            "messages[0].role",
            "string `role`",
        ),
        (
            json!([{"role": "tool", "content": "hi"}]),
            "messages[0].role",
            "Unsupported role `tool`",
        ),
        (
            json!([{"role": "assistant", "content": "hi"}]),
            "messages[0]",
            "must start with a user message",
        ),
        (
            json!([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]),
            "messages",
            "last message must be from the user",
        ),
        (
            json!([{"role": "user", "content": 7}]),
            "messages[0].content",
            "string or an array",
        ),
        (
            json!([{"role": "user", "content": [{"type": "audio"}]}]),
            "messages[0].content[0].type",
            "Unsupported content part",
        ),
        (
            json!([{"role": "user", "content": [{"type": "text"}]}]),
            "messages[0].content[0].text",
            "string `text`",
        ),
        (
            json!([{"role": "user", "content": [{"type": "image_url"}]}]),
            "messages[0].content[0].image_url.url",
            "needs `image_url.url`",
        ),
        (
            json!([{"role": "user", "content": [image, image]}]),
            "messages[0].content",
            "at most one image per message",
        ),
        (
            json!([{"role": "system", "content": [image]}, {"role": "user", "content": "hi"}]),
            "messages[0].content",
            "Only user messages may contain images",
        ),
    ];
    for (messages, param, needle) in cases {
        let error = parse(messages.clone()).unwrap_err();
        assert_eq!(error.param.as_deref(), Some(param), "{messages}");
        assert!(error.message.contains(needle), "{messages}: {error}");
    }
}

#[test]
fn data_urls_decode_within_their_limit() {
    assert_eq!(
        decode_data_url("image/png;base64,aGk=", 16),
        Ok(b"hi".to_vec())
    );
    assert_eq!(
        decode_data_url("image/png;base64,aGVsbG8gd29ybGQ=", 4),
        Err(DataUrlError::TooLarge)
    );
    for (url, needle) in [
        ("image/png;base64", "no `,`"),
        ("image/png,aGk=", "only base64"),
        ("text/plain;base64,aGk=", "not an image type"),
        ("image/png;base64,!!!", "does not decode"),
    ] {
        match decode_data_url(url, 16) {
            Err(DataUrlError::Invalid(message)) => assert!(message.contains(needle), "{message}"),
            other => panic!("{url}: {other:?}"),
        }
    }
}

#[test]
fn image_urls_are_told_apart_and_file_paths_decoded() {
    let cases = [
        (
            "data:image/png;base64,aGk=",
            ImageUrl::Data("image/png;base64,aGk="),
        ),
        (
            "file:///a%20b/c%2Fd%zz",
            ImageUrl::File("/a b/c/d%zz".into()),
        ),
        ("file://localhost/x.png", ImageUrl::File("/x.png".into())),
        (
            "https://example.com/a.png",
            ImageUrl::Remote("https://example.com/a.png"),
        ),
        (
            "http://example.com/a.png",
            ImageUrl::Remote("http://example.com/a.png"),
        ),
        ("photos/cat.png", ImageUrl::Other("photos/cat.png")),
        (
            "ftp://example.com/a.png",
            ImageUrl::Other("ftp://example.com/a.png"),
        ),
    ];
    for (url, kind) in cases {
        assert_eq!(ImageUrl::parse(url), kind, "{url}");
    }
}
