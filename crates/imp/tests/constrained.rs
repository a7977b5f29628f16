//! Constrained decoding on the tiny random-weight models, whose free answers are gibberish: an
//! answer that parses and validates can only come from the constraint. Every family's tokenizer
//! (Phi-2 and Qwen2 byte-level BPE, Phi-3 SentencePiece), greedy and sampled, with streaming,
//! stop strings and the token limit.

use imp::{
    generate, Constraint, Error, FinishReason, Generation, GenerationOptions, Grammar, ImpModel,
    LoadOptions, Prompt, SamplingParams,
};
use serde_json::{json, Value};

use crate::support::{image, load, model_dir};

/// One model per tokenizer family and tensor style.
const FAMILIES: [&str; 4] = [
    "imp-v1-3b",
    "imp-v1.5-3b-196",
    "imp-v1.5-2b-qwen1.5",
    "imp-v1.5-4b-phi3",
];

/// Greedy, then sampled with three seeds.
const SAMPLINGS: [(f32, u64); 4] = [(0.0, 0), (1.0, 1), (1.0, 2), (1.0, 3)];

/// Schemas whose every valid answer is short enough to finish within [`MAX_TOKENS`].
fn schemas() -> Vec<(&'static str, Value)> {
    vec![
        (
            "object with required keys",
            json!({
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 12},
                    "count": {"type": "integer", "minimum": 0, "maximum": 99},
                },
                "required": ["name", "count"],
                "additionalProperties": false,
            }),
        ),
        (
            "enum",
            json!({
                "type": "object",
                "properties": {"color": {"enum": ["red", "green", "blue"]}},
                "required": ["color"],
                "additionalProperties": false,
            }),
        ),
        (
            "array with bounds",
            json!({
                "type": "array",
                "items": {"type": "string", "maxLength": 8},
                "minItems": 2,
                "maxItems": 4,
            }),
        ),
        (
            "numbers",
            json!({
                "type": "object",
                "properties": {
                    "n": {"type": "integer", "minimum": -50, "maximum": 1000},
                    "ok": {"type": "boolean"},
                    "nothing": {"type": "null"},
                },
                "required": ["n", "ok", "nothing"],
                "additionalProperties": false,
            }),
        ),
        (
            "nested objects",
            json!({
                "type": "object",
                "properties": {
                    "box": {
                        "type": "object",
                        "properties": {
                            "label": {"type": "string", "maxLength": 10},
                            "corners": {
                                "type": "array",
                                "items": {"type": "integer", "minimum": 0, "maximum": 640},
                                "minItems": 4,
                                "maxItems": 4,
                            },
                        },
                        "required": ["label", "corners"],
                        "additionalProperties": false,
                    },
                    "confidence": {"enum": ["low", "high"]},
                },
                "required": ["box", "confidence"],
                "additionalProperties": false,
            }),
        ),
    ]
}

const MAX_TOKENS: usize = 160;

/// A grammar is compiled once and guides every sampling of it.
fn options(grammar: &Grammar, (temperature, seed): (f32, u64)) -> GenerationOptions {
    GenerationOptions {
        max_new_tokens: MAX_TOKENS,
        sampling: SamplingParams {
            temperature,
            seed,
            ..Default::default()
        },
        grammar: Some(grammar.clone()),
        ..Default::default()
    }
}

fn compile(model: &ImpModel, constraint: Constraint) -> Grammar {
    model.compile_constraint(&constraint).unwrap()
}

fn ask(model: &ImpModel, options: &GenerationOptions, on_text: &mut dyn FnMut(&str)) -> Generation {
    let prompt = Prompt::Question("What is on the table? Answer in JSON.".into());
    generate(
        model,
        &prompt,
        &[image("skimage_coffee.png")],
        options,
        on_text,
    )
    .unwrap()
}

#[test]
fn answers_always_parse_and_validate_for_every_schema_family_and_seed() {
    for name in FAMILIES {
        let model = load(&model_dir(name), &LoadOptions::default());
        for (what, schema) in schemas() {
            let validator = jsonschema::validator_for(&schema).unwrap();
            let grammar = compile(&model, Constraint::JsonSchema(schema.clone()));
            for sampling in SAMPLINGS {
                let options = options(&grammar, sampling);
                let mut streamed = String::new();
                let answer = ask(&model, &options, &mut |piece| streamed.push_str(piece));
                let context = format!("{name}, {what}, sampling {sampling:?}: {:?}", answer.text);
                assert_eq!(answer.finish_reason, FinishReason::Stop, "{context}");
                assert_eq!(streamed, answer.text, "{context}: streamed pieces");
                let value: Value = serde_json::from_str(&answer.text)
                    .unwrap_or_else(|e| panic!("{context}: not JSON: {e}"));
                let errors: Vec<String> = validator
                    .iter_errors(&value)
                    .map(|e| e.to_string())
                    .collect();
                assert!(errors.is_empty(), "{context}: {errors:?}");
            }
        }
    }
}

#[test]
fn the_free_answer_of_these_models_is_not_json() {
    // Without this, the test above would prove nothing.
    for name in FAMILIES {
        let model = load(&model_dir(name), &LoadOptions::default());
        let options = GenerationOptions {
            max_new_tokens: 24,
            ..Default::default()
        };
        let answer = ask(&model, &options, &mut |_| {});
        assert!(
            serde_json::from_str::<Value>(&answer.text).is_err(),
            "{name}: {:?}",
            answer.text
        );
    }
}

#[test]
fn json_object_regex_and_lark_constraints_hold() {
    let regex = regex::Regex::new(r"^(yes|no), [0-9]{1,3} cats?$").unwrap();
    let lark = "start: \"The cup is \" colour \".\"\ncolour: \"red\" | \"white\" | \"blue\"\n";
    for name in FAMILIES {
        let model = load(&model_dir(name), &LoadOptions::default());
        let object_grammar = compile(&model, Constraint::JsonObject);
        let regex_grammar = compile(
            &model,
            Constraint::Regex(r"(yes|no), [0-9]{1,3} cats?".into()),
        );
        let lark_grammar = compile(&model, Constraint::Lark(lark.into()));
        for sampling in SAMPLINGS {
            let context = format!("{name}, sampling {sampling:?}");
            let object = ask(&model, &options(&object_grammar, sampling), &mut |_| {});
            // Any object may be longer than the limit; a finished one must parse.
            if object.finish_reason == FinishReason::Stop {
                let value: Value = serde_json::from_str(&object.text)
                    .unwrap_or_else(|e| panic!("{context}: {:?}: {e}", object.text));
                assert!(value.is_object(), "{context}: {value}");
            } else {
                assert!(object.text.starts_with('{'), "{context}: {:?}", object.text);
            }

            let answer = ask(&model, &options(&regex_grammar, sampling), &mut |_| {});
            assert_eq!(answer.finish_reason, FinishReason::Stop, "{context}");
            assert!(regex.is_match(&answer.text), "{context}: {:?}", answer.text);

            let answer = ask(&model, &options(&lark_grammar, sampling), &mut |_| {});
            assert!(
                ["The cup is red.", "The cup is white.", "The cup is blue."]
                    .contains(&answer.text.as_str()),
                "{context}: {:?}",
                answer.text
            );
        }
    }
}

#[test]
fn a_cut_off_answer_says_length_and_stop_strings_still_apply() {
    let schema = json!({
        "type": "array",
        "items": {"type": "string", "minLength": 20, "maxLength": 30},
        "minItems": 3,
        "maxItems": 3,
    });
    let constraint = Constraint::JsonSchema(schema);
    for name in FAMILIES {
        let model = load(&model_dir(name), &LoadOptions::default());
        let grammar = compile(&model, constraint.clone());
        let cut = GenerationOptions {
            max_new_tokens: 4,
            ..options(&grammar, (0.0, 0))
        };
        let answer = ask(&model, &cut, &mut |_| {});
        assert_eq!(answer.finish_reason, FinishReason::Length, "{name}");
        assert_eq!(answer.tokens.len(), 4, "{name}");
        assert!(answer.text.starts_with("[\""), "{name}: {:?}", answer.text);

        let stopped = GenerationOptions {
            stop_strings: vec!["\", \"".into()],
            ..options(&grammar, (0.0, 0))
        };
        let answer = ask(&model, &stopped, &mut |_| {});
        assert_eq!(answer.finish_reason, FinishReason::Stop, "{name}");
        assert!(answer.text.starts_with("[\""), "{name}: {:?}", answer.text);
        assert!(!answer.text.contains("\", \""), "{name}: {:?}", answer.text);
    }
}

#[test]
fn bad_constraints_are_errors_that_name_the_problem() {
    let model = load(&model_dir("imp-v1.5-4b-phi3"), &LoadOptions::default());
    let cases = [
        (Constraint::JsonSchema(json!({"type": "strin"})), "strin"),
        (
            Constraint::JsonSchema(json!({"type": "string", "minLength": 5, "maxLength": 2})),
            "JSON schema",
        ),
        (Constraint::Regex("(unclosed".into()), "regex"),
        (
            Constraint::Lark("start: missing_rule\n".into()),
            "missing_rule",
        ),
        (Constraint::Lark("start: \"a\" (\n".into()), "Lark grammar"),
    ];
    for (constraint, named) in cases {
        match model.compile_constraint(&constraint) {
            Err(Error::Constraint(message)) => {
                assert!(message.contains(named), "{constraint:?}: {message}")
            }
            other => panic!("{constraint:?}: {other:?}"),
        }
    }
}
