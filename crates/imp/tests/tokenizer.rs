//! `imp::tokenizer` against the tokenizer files shipped with the models and two independent
//! references: llama.cpp's tokenizer test vectors (made with HF tokenizers) and
//! `expected.json`, written by transformers itself (scripts/fixtures/gen_tokenizers.py).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use imp::tokenizer::ImpTokenizer;
use serde::Deserialize;
use serde_json::Value;

use crate::support::{fixture, read_json};

/// Imp's own additions to the Phi-2 vocabulary (from the project reference).
const PHI2_EOS: u32 = 50295;
const PHI2_IMAGE: u32 = 50296;
/// CodeGen's added whitespace-run tokens in Phi-2's vocabulary.
const PHI2_WHITESPACE_IDS: std::ops::RangeInclusive<u32> = 50257..=50294;
const QWEN_IMAGE: u32 = 151646;
const PHI3_IMAGE: u32 = 32011;

fn fixtures() -> PathBuf {
    fixture("tokenizers")
}

#[derive(Deserialize)]
struct Expected {
    llama_cpp_inputs: usize,
    texts: Vec<String>,
    tokenizers: HashMap<String, Reference>,
}

#[derive(Deserialize)]
struct Reference {
    added_special_tokens: Vec<String>,
    added_special_token_ids: Vec<u32>,
    vocab_size: usize,
    cases: Vec<Case>,
    /// Only for the slow Phi-3 reference: texts whose ids differ from the fast one.
    #[serde(default)]
    ids_differ_from_fast: Vec<usize>,
}

#[derive(Deserialize)]
struct Case {
    ids: Vec<u32>,
    decoded: String,
    decoded_skip_special: String,
}

static EXPECTED: LazyLock<Expected> =
    LazyLock::new(|| read_json(&fixtures().join("expected.json")));

fn reference(name: &str) -> &'static Reference {
    &EXPECTED.tokenizers[name]
}

fn load(dir: &Path) -> ImpTokenizer {
    ImpTokenizer::from_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

/// A copy of a fixture folder holding only `files`, to load it through a fallback layout.
fn folder_with(model: &str, files: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for file in files {
        fs::copy(fixtures().join(model).join(file), dir.path().join(file)).unwrap();
    }
    dir
}

/// Where a tokenizer is read from: a fixture folder as shipped, or a copy of one holding only
/// some of its files.
#[derive(Clone, Copy, Debug)]
enum Folder {
    Shipped(&'static str),
    Only(&'static str, &'static [&'static str]),
}

/// Phi-3's SentencePiece `tokenizer.model` and its configs, without `tokenizer.json`.
const PHI3_SENTENCEPIECE_FILES: &[&str] = &[
    "tokenizer.model",
    "tokenizer_config.json",
    "added_tokens.json",
    "special_tokens_map.json",
];

/// Phi-3 read from its SentencePiece `tokenizer.model`.
const PHI3_FROM_SENTENCEPIECE: Folder = Folder::Only("phi-3", PHI3_SENTENCEPIECE_FILES);

/// Phi-2 read from `vocab.json` + `merges.txt` (the GPT-2/CodeGen flavour).
const PHI2_FROM_VOCAB_AND_MERGES: Folder = Folder::Only(
    "phi-2",
    &[
        "vocab.json",
        "merges.txt",
        "added_tokens.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ],
);

impl Folder {
    fn load(self) -> ImpTokenizer {
        match self {
            Folder::Shipped(model) => load(&fixtures().join(model)),
            Folder::Only(model, files) => load(folder_with(model, files).path()),
        }
    }
}

/// llama.cpp's inputs and the ids HF tokenizers gave for them.
fn llama_cpp_vectors(vocab: &str) -> Vec<(String, Vec<u32>)> {
    let base = fixtures().join("reference-vectors-llama.cpp").join(vocab);
    let inputs = fs::read_to_string(base.with_extension("gguf.inp")).unwrap();
    let outputs = fs::read_to_string(base.with_extension("gguf.out")).unwrap();
    let inputs: Vec<&str> = inputs
        .strip_suffix("\n__ggml_vocab_test__\n")
        .unwrap()
        .split("\n__ggml_vocab_test__\n")
        .collect();
    let outputs: Vec<Vec<u32>> = outputs
        .lines()
        .map(|line| {
            line.split_whitespace()
                .map(|id| id.parse().unwrap())
                .collect()
        })
        .collect();
    assert_eq!(inputs.len(), outputs.len(), "{vocab}: inputs vs outputs");
    assert_eq!(inputs.len(), EXPECTED.llama_cpp_inputs);
    inputs.into_iter().map(String::from).zip(outputs).collect()
}

/// Texts whose encoding differs from the reference, as readable lines.
fn encoding_mismatches(tokenizer: &ImpTokenizer, cases: &[(String, Vec<u32>)]) -> Vec<String> {
    cases
        .iter()
        .filter_map(|(text, want)| {
            let got = tokenizer.encode(text).unwrap();
            (&got != want).then(|| format!("{text:?}: got {got:?}, want {want:?}"))
        })
        .collect()
}

#[test]
fn phi2_matches_gpt2_vectors_except_codegen_whitespace_runs() {
    // Phi-2 is GPT-2's BPE plus CodeGen's whitespace-run tokens, which GPT-2 lacks: inputs that
    // contain such a run must differ from GPT-2 and then match transformers' Phi-2 instead.
    let tokenizer = Folder::Shipped("phi-2").load();
    let phi2 = reference("phi-2");
    let mut differing = 0;
    for (i, (text, gpt2_ids)) in llama_cpp_vectors("ggml-vocab-gpt-2").iter().enumerate() {
        let ids = tokenizer.encode(text).unwrap();
        assert_eq!(EXPECTED.texts[i], *text);
        if &ids == gpt2_ids {
            continue;
        }
        differing += 1;
        assert_eq!(ids, phi2.cases[i].ids, "{text:?} vs transformers' Phi-2");
        assert!(
            ids.iter().any(|id| PHI2_WHITESPACE_IDS.contains(id)),
            "{text:?} differs from GPT-2 without using a whitespace-run token: {ids:?}"
        );
    }
    assert_eq!(differing, 7, "inputs where Phi-2 and GPT-2 differ");
}

/// (tokenizer, llama.cpp vocabulary whose vectors it must reproduce)
const LLAMA_CPP_VECTORS: [(Folder, &str); 3] = [
    (Folder::Shipped("qwen1.5"), "ggml-vocab-qwen2"),
    (Folder::Shipped("phi-3"), "ggml-vocab-phi-3"),
    (PHI3_FROM_SENTENCEPIECE, "ggml-vocab-phi-3"),
];

#[test]
fn qwen_and_phi3_match_llama_cpp_vectors() {
    for (folder, vocab) in LLAMA_CPP_VECTORS {
        let mismatches = encoding_mismatches(&folder.load(), &llama_cpp_vectors(vocab));
        assert!(
            mismatches.is_empty(),
            "{folder:?} against {vocab}: {} of {} differ:\n{}",
            mismatches.len(),
            EXPECTED.llama_cpp_inputs,
            mismatches.join("\n")
        );
    }
}

/// Adds Imp's special tokens, then compares every encoding and both decodings of every text.
fn assert_matches_transformers(folder: Folder, name: &str) {
    let reference = reference(name);
    let mut tokenizer = folder.load();
    let added: Vec<&str> = reference
        .added_special_tokens
        .iter()
        .map(String::as_str)
        .collect();
    let ids = tokenizer.ensure_special_tokens(&added).unwrap();
    assert_eq!(
        ids, reference.added_special_token_ids,
        "{folder:?}, {name}: added ids"
    );
    assert_eq!(
        tokenizer.vocab_size(),
        reference.vocab_size,
        "{folder:?}, {name}: size"
    );

    let mut failures = Vec::new();
    for (text, case) in EXPECTED.texts.iter().zip(&reference.cases) {
        let ids = tokenizer.encode(text).unwrap();
        if ids != case.ids {
            failures.push(format!("encode {text:?}: got {ids:?}, want {:?}", case.ids));
        }
        for (skip, want) in [(false, &case.decoded), (true, &case.decoded_skip_special)] {
            let got = tokenizer.decode(&case.ids, skip).unwrap();
            if &got != want {
                failures.push(format!(
                    "decode {text:?} (skip {skip}): got {got:?}, want {want:?}"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{folder:?}, {name}: {} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// (tokenizer, transformers' reference it must match). transformers' slow SentencePiece
/// tokenizer (legacy=False) differs from the fast one after special tokens; ours follows the
/// fast one, the primary reference, also when read from `tokenizer.model`.
const TRANSFORMERS_REFERENCES: [(Folder, &str); 5] = [
    (Folder::Shipped("phi-2"), "phi-2"),
    (PHI2_FROM_VOCAB_AND_MERGES, "phi-2"),
    (Folder::Shipped("qwen1.5"), "qwen1.5"),
    (Folder::Shipped("phi-3"), "phi-3"),
    (PHI3_FROM_SENTENCEPIECE, "phi-3"),
];

#[test]
fn every_layout_matches_transformers() {
    for (folder, name) in TRANSFORMERS_REFERENCES {
        assert_matches_transformers(folder, name);
    }
}

/// The slow tokenizer (legacy=False) prepends no `▁` to text that follows a special token, the
/// fast one does; everywhere else the two agree, and ours agrees with both.
#[test]
fn phi3_from_sentencepiece_differs_from_slow_transformers_only_where_fast_does() {
    let mut tokenizer = PHI3_FROM_SENTENCEPIECE.load();
    tokenizer.ensure_special_tokens(&["<image>"]).unwrap();
    let slow = reference("phi-3-slow");
    assert!(!slow.ids_differ_from_fast.is_empty());
    for (i, (text, case)) in EXPECTED.texts.iter().zip(&slow.cases).enumerate() {
        let same = tokenizer.encode(text).unwrap() == case.ids;
        assert_eq!(same, !slow.ids_differ_from_fast.contains(&i), "{text:?}");
    }
}

/// The parts of a serialized tokenizer that decide its behaviour.
fn sections(tokenizer: &ImpTokenizer, keys: &[&str]) -> Vec<(String, Value)> {
    let json: Value = serde_json::from_str(&tokenizer.inner().to_string(false).unwrap()).unwrap();
    keys.iter()
        .map(|key| {
            (
                key.to_string(),
                json.pointer(key).cloned().unwrap_or(Value::Null),
            )
        })
        .collect()
}

/// (shipped folder, fallback layout rebuilt from it, the parts that must be equal)
const REBUILDS: [(&str, Folder, &[&str]); 2] = [
    (
        "phi-3",
        PHI3_FROM_SENTENCEPIECE,
        &[
            "/model",
            "/normalizer",
            "/pre_tokenizer",
            "/decoder",
            "/added_tokens",
        ],
    ),
    (
        "phi-2",
        PHI2_FROM_VOCAB_AND_MERGES,
        &[
            "/model/vocab",
            "/model/merges",
            "/pre_tokenizer",
            "/added_tokens",
        ],
    ),
];

#[test]
fn fallback_layouts_rebuild_the_shipped_tokenizer() {
    for (shipped, fallback, keys) in REBUILDS {
        let shipped = sections(&Folder::Shipped(shipped).load(), keys);
        let built = sections(&fallback.load(), keys);
        for ((key, shipped), (_, built)) in shipped.iter().zip(&built) {
            assert!(shipped == built, "{fallback:?}: {key} differs");
        }
    }
}

#[test]
fn imp_special_tokens_get_their_ids() {
    let mut phi2 = Folder::Shipped("phi-2").load();
    assert_eq!(phi2.token_id("<image>"), None);
    let size = phi2.vocab_size();
    let ids = phi2.ensure_special_tokens(&["</s>", "<image>"]).unwrap();
    assert_eq!(ids, [PHI2_EOS, PHI2_IMAGE]);
    assert_eq!(phi2.vocab_size(), size + 2);
    // Idempotent: a second call adds nothing.
    assert_eq!(
        phi2.ensure_special_tokens(&["<image>", "</s>"]).unwrap(),
        [PHI2_IMAGE, PHI2_EOS]
    );
    assert_eq!(phi2.vocab_size(), size + 2);
    assert_eq!(phi2.token_id("</s>"), Some(PHI2_EOS));
    let ids = phi2.encode("a<image>b</s>").unwrap();
    assert_eq!((ids[1], ids[ids.len() - 1]), (PHI2_IMAGE, PHI2_EOS));
    assert_eq!(phi2.decode(&[PHI2_IMAGE, PHI2_EOS], true).unwrap(), "");

    let mut qwen = Folder::Shipped("qwen1.5").load();
    assert_eq!(
        qwen.ensure_special_tokens(&["<image>"]).unwrap(),
        [QWEN_IMAGE]
    );
    assert_eq!(qwen.token_id("<|endoftext|>"), Some(151643));
    assert_eq!(qwen.token_id("<|im_start|>"), Some(151644));
    assert_eq!(qwen.token_id("<|im_end|>"), Some(151645));

    let mut phi3 = Folder::Shipped("phi-3").load();
    assert_eq!(
        phi3.ensure_special_tokens(&["<image>"]).unwrap(),
        [PHI3_IMAGE]
    );
    assert_eq!(phi3.token_id("<s>"), Some(1));
    assert_eq!(phi3.token_id("<|assistant|>"), Some(32001));
    assert_eq!(phi3.token_id("<|system|>"), Some(32006));
    assert_eq!(phi3.token_id("<|end|>"), Some(32007));
    assert_eq!(phi3.token_id("<|user|>"), Some(32010));
    // Encoding never adds BOS.
    assert_ne!(phi3.encode("Hi").unwrap()[0], 1);

    assert!(phi3.ensure_special_tokens(&[""]).is_err());
}

fn load_error(dir: &Path) -> String {
    ImpTokenizer::from_dir(dir)
        .expect_err("loading should fail")
        .to_string()
}

#[test]
fn missing_or_empty_folder_lists_the_files_looked_for() {
    let dir = tempfile::tempdir().unwrap();
    for folder in [dir.path().to_path_buf(), dir.path().join("absent")] {
        let message = load_error(&folder);
        for file in [
            "tokenizer.json",
            "vocab.json",
            "merges.txt",
            "tokenizer.model",
        ] {
            assert!(message.contains(file), "{message}");
        }
    }
}

#[test]
fn corrupt_files_are_named() {
    let cases: [(&str, &[u8]); 6] = [
        ("tokenizer.json", b"{\"model\": "),
        // Made tokenizers 0.23 panic (fuzzing).
        ("tokenizer.json", DECODER_SYNTAX_ERROR),
        ("tokenizer.model", b"this is not a protobuf"),
        ("vocab.json", b"[1, 2"),
        ("merges.txt", b"#version: 0.2\nab\n"),
        ("tokenizer_config.json", b"{"),
    ];
    for (file, bytes) in cases {
        let dir = match file {
            "vocab.json" | "merges.txt" | "tokenizer_config.json" => folder_with(
                "qwen1.5",
                &["vocab.json", "merges.txt", "tokenizer_config.json"],
            ),
            _ => tempfile::tempdir().unwrap(),
        };
        fs::write(dir.path().join(file), bytes).unwrap();
        let message = load_error(dir.path());
        assert!(message.contains(file), "{file}: {message}");
    }
}

const DECODER_SYNTAX_ERROR: &[u8] = br#"{"decoder": {"type": "ByteLevel", "x": }}"#;
const DECODER_LONE_SURROGATE: &[u8] = br#"{"decoder": {"type": "ByteLevel", "x": "\ud800"}}"#;

#[test]
fn corrupt_embedded_tokenizer_is_an_error() {
    for json in [DECODER_SYNTAX_ERROR, DECODER_LONE_SURROGATE, b"{}", b"[1"] {
        let json = std::str::from_utf8(json).unwrap();
        let error = ImpTokenizer::from_json(json, None).expect_err(json);
        assert!(
            error.to_string().contains("invalid tokenizer JSON"),
            "{error}"
        );
    }
}

#[test]
fn truncated_sentencepiece_model_is_rejected() {
    let dir = folder_with("phi-3", PHI3_SENTENCEPIECE_FILES);
    let path = dir.path().join("tokenizer.model");
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let message = load_error(dir.path());
    assert!(message.contains("tokenizer.model"), "{message}");
}
