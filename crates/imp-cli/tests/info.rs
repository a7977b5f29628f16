//! `imp info`: what was detected in a model folder, as JSON and as text.

use serde_json::Value;

use crate::support::{arg, imp, model, stderr};

#[test]
fn info_reports_what_was_detected() {
    let out = imp(&["info", "--model", arg(&model("imp-v1.5-3b-196")), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["model_type"], "imp");
    assert!(info["naming_style"]
        .as_str()
        .unwrap()
        .starts_with("phi-msft"));
    assert_eq!(info["visual_tokens"], 9);
    assert_eq!(info["vision"]["image_size"], 42);
    assert_eq!(info["vision"]["layers"], 2);
    assert_eq!(
        info["vision"]["settings_from"],
        "siglip-so400m-patch14-196/config.json"
    );
    assert!(info["storage_dtype"][0]
        .as_str()
        .unwrap()
        .starts_with("f16"));
    assert_eq!(info["stop_token_ids"], serde_json::json!([50295]));

    let out = imp(&["info", "--model", arg(&model("imp-v1.5-4b-phi3"))]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("Phi-3"), "{text}");
    assert!(text.contains("Pad"), "{text}");
}
