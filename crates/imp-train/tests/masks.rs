//! Ids and label masks against the reference's preprocessing (`masks.json`, written by
//! `scripts/fixtures/gen_train.py` from MILVLG/imp's `train.py`), on the real tokenizers of the
//! tiny checkpoints.

use std::path::Path;

use imp::checkpoint;
use imp::config::ImpConfig;
use imp::template::SpecialTokens;
use imp::tokenizer::ImpTokenizer;
use imp_train::data::{self, Format, Sample};
use imp_train::template::{encode, encode_with_limit, Template, IGNORE_INDEX};
use serde::Deserialize;

use crate::support::{fixture_dir, image_folder, model_dir, TRAINED_MODELS};

/// The reference's image sentinel.
const IMAGE_TOKEN_INDEX: i64 = -200;

#[derive(Deserialize)]
struct Masks {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    template: String,
    sample: serde_json::Value,
    input_ids: Vec<i64>,
    labels: Vec<i64>,
    mismatch: bool,
}

struct Model {
    tokenizer: ImpTokenizer,
    special: SpecialTokens,
    template: Template,
}

/// The tokenizer with the tokens the reference adds, without loading any weights.
fn load(name: &str) -> Model {
    let source = checkpoint::open(&model_dir(name)).expect("checkpoint");
    let config = ImpConfig::load(
        &source.config_files().expect("config files"),
        source.as_ref(),
    )
    .expect("config");
    let mut tokenizer = source.tokenizer().expect("tokenizer");
    let special = SpecialTokens::add_to(&mut tokenizer, &config).expect("special tokens");
    Model {
        tokenizer,
        special,
        template: Template::for_family(config.decoder.family),
    }
}

fn sample(value: &serde_json::Value, case: &str) -> Sample {
    let text = format!("[{value}]");
    let mut samples = data::parse(&text, Format::Json, Path::new(case)).expect("sample");
    samples.remove(0)
}

#[test]
fn ids_and_labels_equal_the_reference() {
    for name in TRAINED_MODELS {
        let model = load(name);
        let path = fixture_dir(name).join("masks.json");
        let masks: Masks =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("masks.json"))
                .expect("masks.json parses");
        assert!(
            masks.cases.iter().any(|c| c.mismatch),
            "{name}: no mismatch case"
        );
        assert!(masks.cases.iter().any(|c| c.template == "plain"), "{name}");
        for case in &masks.cases {
            let template: Template = case.template.parse().expect("template");
            if template != Template::Plain {
                assert_eq!(template, model.template, "{name} {}", case.name);
            }
            let sample = sample(&case.sample, &case.name);
            let encoded = encode(
                template,
                &model.tokenizer,
                &sample,
                model.special.image,
                model.special.bos,
            )
            .unwrap_or_else(|e| panic!("{name} {}: {e}", case.name));
            let expected_ids: Vec<u32> = case
                .input_ids
                .iter()
                .map(|&id| {
                    if id == IMAGE_TOKEN_INDEX {
                        model.special.image
                    } else {
                        u32::try_from(id).expect("token id")
                    }
                })
                .collect();
            let context = format!("{name} {} ({template})", case.name);
            assert_eq!(encoded.input_ids, expected_ids, "{context}: ids");
            assert_eq!(encoded.labels, case.labels, "{context}: labels");
            assert_eq!(encoded.mismatch, case.mismatch, "{context}: mismatch");
            if case.mismatch {
                assert!(
                    encoded.labels.iter().all(|&l| l == IGNORE_INDEX),
                    "{context}"
                );
                // The reference only checks while the cursor is below model_max_length.
                let limited = encode_with_limit(
                    template,
                    &model.tokenizer,
                    &sample,
                    model.special.image,
                    model.special.bos,
                    Some(2),
                )
                .expect("encodes");
                assert!(!limited.mismatch, "{context}: checked past the limit");
            } else {
                assert!(encoded.loss_tokens() > 0, "{context}: no loss token");
            }
        }
    }
}

#[test]
fn the_training_samples_read_from_data_json() {
    for name in TRAINED_MODELS {
        let samples = data::read(&fixture_dir(name).join("data.json")).expect("data.json");
        assert_eq!(samples.len(), 3, "{name}");
        // The marker written at the end of the question moved to the front.
        assert_eq!(
            samples[0].conversations[0].value,
            "<image>\nWhat animal is this?"
        );
        assert_eq!(samples[0].rounds().count(), 2);
        assert!(!samples[1].has_image());
        for sample in samples.iter().filter(|s| s.has_image()) {
            let image = sample.image.as_deref().expect("image");
            assert!(image_folder().join(image).is_file(), "{image}");
        }
    }
}

#[test]
fn plain_refuses_what_the_reference_asserts_against() {
    let model = load(TRAINED_MODELS[0]);
    let text = r#"[{"id": "t", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]},
        {"id": "two", "image": "a.png", "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "A"},
         {"from": "human", "value": "B"}, {"from": "gpt", "value": "C"}]}]"#;
    let samples = data::parse(text, Format::Json, Path::new("t.json")).expect("parses");
    for sample in &samples {
        let error = encode(
            Template::Plain,
            &model.tokenizer,
            sample,
            model.special.image,
            model.special.bos,
        )
        .expect_err("plain needs one image round");
        assert!(error.to_string().contains("plain template"), "{error}");
    }
}
