//! Constrained decoding: answers that must match a JSON schema, a regular expression or a Lark
//! grammar. Every token that cannot continue a match has its logit set to −∞ before the sampler
//! sees it, so even a model that writes gibberish writes valid JSON. The grammar engine is
//! llguidance (the one behind mistral.rs and llama.cpp's `%llguidance`).
//!
//! Three costs, paid at three times:
//! - [`Vocabulary`]: each token id's bytes in a trie, built once per model on first use;
//! - [`Grammar`]: a constraint compiled (and checked) once per request;
//! - [`Guide`]: one generation's matcher, on a helper thread that computes the next token's mask
//!   while the decoder computes that token's logits, so a constraint costs no decode time as
//!   long as its mask takes less time than a forward pass.

use std::fmt;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::{json, Value};
use tokenizers::DecoderWrapper;

use crate::error::parser_panic_as_error;
use crate::tokenizer::ImpTokenizer;
use crate::{Error, Result};

/// What an answer must match.
#[derive(Debug, Clone, PartialEq)]
pub enum Constraint {
    /// Any JSON object (OpenAI's `response_format: {"type": "json_object"}`).
    JsonObject,
    /// A value valid under this JSON schema (draft 2020-12 keywords that llguidance supports;
    /// others are refused, not ignored).
    JsonSchema(Value),
    /// The whole answer matches this regular expression.
    Regex(String),
    /// A Lark grammar, as llguidance reads it (`start:` is the whole answer).
    Lark(String),
}

impl Constraint {
    /// Short name for messages: "JSON schema", "regex" ...
    pub fn kind(&self) -> &'static str {
        match self {
            Self::JsonObject => "JSON object",
            Self::JsonSchema(_) => "JSON schema",
            Self::Regex(_) => "regex",
            Self::Lark(_) => "Lark grammar",
        }
    }

    fn to_grammar(&self) -> TopLevelGrammar {
        match self {
            Self::JsonObject => {
                TopLevelGrammar::from_json_schema(compact(json!({"type": "object"})))
            }
            Self::JsonSchema(schema) => TopLevelGrammar::from_json_schema(compact(schema.clone())),
            Self::Regex(regex) => TopLevelGrammar::from_regex(regex),
            Self::Lark(lark) => TopLevelGrammar::from_lark(lark.clone()),
        }
    }
}

/// JSON on one line with `", "` and `": "` between items, unless the schema sets llguidance's own
/// `x-guidance` options: free whitespace would let a weak model fill `max_tokens` with newlines.
fn compact(mut schema: Value) -> Value {
    if let Some(object) = schema.as_object_mut() {
        object.entry("x-guidance").or_insert_with(
            || json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}),
        );
    }
    schema
}

/// A model's tokens as bytes, in the trie llguidance walks to compute masks.
pub struct Vocabulary {
    factory: ParserFactory,
}

impl fmt::Debug for Vocabulary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vocabulary")
            .field("tokens", &self.factory.tok_env().tok_trie().vocab_size())
            .finish_non_exhaustive()
    }
}

impl Vocabulary {
    /// `logits` is the decoder's output width (ids the tokenizer lacks can never be allowed);
    /// `stop_ids` end an answer, and are allowed where the grammar is complete.
    pub fn new(tokenizer: &ImpTokenizer, logits: usize, stop_ids: &[u32]) -> Result<Self> {
        let words = token_bytes(tokenizer, logits)?;
        let stop_ids: Vec<TokenId> = stop_ids
            .iter()
            .copied()
            .filter(|&id| (id as usize) < logits)
            .collect();
        let Some(&eos) = stop_ids.first() else {
            return Err(Error::Tokenizer(
                "constrained decoding needs a stop token inside the vocabulary".into(),
            ));
        };
        let failed = |e: String| Error::Tokenizer(format!("cannot index the vocabulary: {e}"));
        let mut factory = parser_panic_as_error(|| {
            let info = TokRxInfo::new(logits as u32, eos);
            let trie = TokTrie::from(&info, &words).with_eos_tokens(&stop_ids);
            let env: TokEnv = Arc::new(TrieTokenizer { trie });
            ParserFactory::new_simple(&env)
        })
        .map_err(failed)?
        .map_err(|e| failed(e.to_string()))?;
        // Problems reach the caller as errors; nothing goes to stderr behind its back.
        factory.quiet();
        Ok(Self { factory })
    }

    /// Checks and compiles a constraint; the error names what is wrong with it.
    pub fn compile(&self, constraint: &Constraint) -> Result<Grammar> {
        let invalid = |e: String| Error::Constraint(format!("invalid {}: {e}", constraint.kind()));
        let parser = parser_panic_as_error(|| self.factory.create_parser(constraint.to_grammar()))
            .map_err(invalid)?
            .map_err(|e| invalid(e.to_string()))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(error) = matcher.get_error() {
            return Err(invalid(error));
        }
        Ok(Grammar {
            matcher,
            kind: constraint.kind(),
        })
    }
}

/// Each id's bytes as llguidance expects them: the text a byte-level BPE token stands for, a
/// SentencePiece piece with `▁` as a space and `<0xNN>` as its byte, special tokens behind
/// llguidance's marker byte (never allowed inside a match), empty for ids the tokenizer lacks.
fn token_bytes(tokenizer: &ImpTokenizer, logits: usize) -> Result<Vec<Vec<u8>>> {
    let inner = tokenizer.inner();
    let kind = match inner.get_decoder() {
        Some(decoder) => PieceKind::of(decoder),
        None => None,
    }
    .ok_or_else(|| {
        Error::Tokenizer(
            "constrained decoding needs a byte-level BPE or SentencePiece byte-fallback \
             tokenizer; this one's decoder is neither"
                .into(),
        )
    })?;
    let byte_of_char = gpt2_byte_decoder();
    let added = inner.get_added_tokens_decoder();
    let mut words = vec![Vec::new(); logits];
    for (id, word) in words.iter_mut().enumerate() {
        let id = id as u32;
        if let Some(token) = added.get(&id) {
            *word = if token.special {
                [&[TokTrie::SPECIAL_TOKEN_MARKER], token.content.as_bytes()].concat()
            } else {
                token.content.clone().into_bytes()
            };
            continue;
        }
        let Some(piece) = inner.id_to_token(id) else {
            continue;
        };
        *word = match kind {
            PieceKind::ByteLevel => {
                let bytes: Option<Vec<u8>> = piece.chars().map(&byte_of_char).collect();
                bytes.ok_or_else(|| {
                    Error::Tokenizer(format!(
                        "token {id} ({piece:?}) is not in the byte-level alphabet"
                    ))
                })?
            }
            PieceKind::SentencePiece => match byte_fallback(&piece) {
                Some(byte) => vec![byte],
                None => piece.replace('▁', " ").into_bytes(),
            },
        };
    }
    Ok(words)
}

#[derive(Clone, Copy)]
enum PieceKind {
    /// GPT-2's byte-to-character table (Phi-2, Qwen2).
    ByteLevel,
    /// `▁` for spaces, `<0xNN>` for bytes without a piece (Phi-3).
    SentencePiece,
}

impl PieceKind {
    fn of(decoder: &DecoderWrapper) -> Option<Self> {
        match decoder {
            DecoderWrapper::ByteLevel(_) => Some(Self::ByteLevel),
            DecoderWrapper::ByteFallback(_) => Some(Self::SentencePiece),
            DecoderWrapper::Sequence(sequence) => sequence.get_decoders().iter().find_map(Self::of),
            _ => None,
        }
    }
}

/// `<0x0A>` → 0x0A.
fn byte_fallback(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    (hex.len() == 2).then(|| u8::from_str_radix(hex, 16).ok())?
}

/// The inverse of GPT-2's `bytes_to_unicode`: printable Latin-1 bytes stand for themselves, the
/// other 68 bytes for the characters from U+0100 on, in byte order.
fn gpt2_byte_decoder() -> impl Fn(char) -> Option<u8> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut table = std::collections::HashMap::with_capacity(256);
    let mut next = 0x100u32;
    for byte in 0..=255u8 {
        let c = if printable(byte) {
            char::from(byte)
        } else {
            next += 1;
            char::from_u32(next - 1).expect("U+0100..U+0144 are characters")
        };
        table.insert(c, byte);
    }
    move |c| table.get(&c).copied()
}

/// What llguidance asks of a tokenizer. Tokenization is the trie's greedy split, declared
/// non-canonical, so llguidance only masks and never forces tokens: the model's own choice of
/// tokens for text the grammar dictates is kept (and SentencePiece's leading space, which a
/// canonical re-tokenization would add, cannot slip in).
struct TrieTokenizer {
    trie: TokTrie,
}

impl TokenizerEnv for TrieTokenizer {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, bytes: &[u8]) -> Vec<TokenId> {
        self.trie.greedy_tokenize(bytes)
    }

    fn tokenize_is_canonical(&self) -> bool {
        false
    }
}

/// A compiled constraint, ready to guide any number of generations.
#[derive(Clone)]
pub struct Grammar {
    matcher: Matcher,
    kind: &'static str,
}

impl fmt::Debug for Grammar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Grammar")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// The tokens allowed next.
pub struct TokenMask(SimpleVob);

impl TokenMask {
    /// Sets every logit the mask forbids to −∞.
    pub fn apply(&self, logits: &mut [f32]) {
        let words = self.0.as_slice();
        for (chunk, &word) in logits.chunks_mut(32).zip(words) {
            if word == u32::MAX {
                continue;
            }
            for (bit, logit) in chunk.iter_mut().enumerate() {
                if word & (1 << bit) == 0 {
                    *logit = f32::NEG_INFINITY;
                }
            }
        }
        // Ids past the mask's end (a vocabulary narrower than the logits) are never allowed.
        logits
            .iter_mut()
            .skip(words.len() * 32)
            .for_each(|logit| *logit = f32::NEG_INFINITY);
    }

    pub fn allows(&self, token: u32) -> bool {
        (token as usize) < self.0.len() && self.0.is_allowed(token)
    }
}

/// One generation's matcher, on its own thread: [`advance`](Self::advance) hands it a token and
/// returns at once; the mask for the token after it is computed meanwhile and collected by
/// [`next_mask`](Self::next_mask).
pub struct Guide {
    tokens: Option<Sender<u32>>,
    masks: Receiver<Result<TokenMask>>,
    worker: Option<JoinHandle<()>>,
}

impl Guide {
    /// Starts computing the first token's mask (while the prompt is prefilled).
    pub fn start(grammar: &Grammar) -> Result<Self> {
        let (tokens, token_rx) = mpsc::channel::<u32>();
        let (mask_tx, masks) = mpsc::channel();
        let mut matcher = grammar.matcher.clone();
        let kind = grammar.kind;
        let worker = std::thread::Builder::new()
            .name("imp-constraint".into())
            .spawn(move || {
                if mask_tx.send(next_mask(&mut matcher, kind)).is_err() {
                    return;
                }
                while let Ok(token) = token_rx.recv() {
                    let result = matcher
                        .consume_token(token)
                        .map_err(|e| Error::Constraint(format!("{kind}: token {token}: {e}")))
                        .and_then(|()| next_mask(&mut matcher, kind));
                    if mask_tx.send(result).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| Error::Constraint(format!("cannot start the constraint thread: {e}")))?;
        Ok(Self {
            tokens: Some(tokens),
            masks,
            worker: Some(worker),
        })
    }

    /// The tokens allowed next, waiting for the worker if it is still computing them.
    pub fn next_mask(&mut self) -> Result<TokenMask> {
        self.masks.recv().unwrap_or_else(|_| {
            Err(Error::Constraint(
                "the constraint thread stopped unexpectedly".into(),
            ))
        })
    }

    /// Commits the sampled token; the next mask is computed in the background.
    pub fn advance(&mut self, token: u32) {
        // A worker gone away is reported by the next `next_mask`.
        if let Some(tokens) = &self.tokens {
            let _ = tokens.send(token);
        }
    }
}

/// The tokens the matcher allows next: only the stop tokens once the grammar is complete.
fn next_mask(matcher: &mut Matcher, kind: &str) -> Result<TokenMask> {
    let failed = |e: String| Error::Constraint(format!("{kind}: {e}"));
    let mask = parser_panic_as_error(|| matcher.compute_mask_or_eos())
        .map_err(failed)?
        .map_err(|e| failed(e.to_string()))?;
    if mask.is_zero() {
        return Err(failed("no token can continue the answer".into()));
    }
    Ok(TokenMask(mask))
}

impl Drop for Guide {
    fn drop(&mut self) {
        // Closing the channel ends the worker's loop after its current mask.
        self.tokens = None;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_byte_table_is_a_bijection_with_the_known_anchors() {
        let decode = gpt2_byte_decoder();
        assert_eq!(decode('Ġ'), Some(b' '));
        assert_eq!(decode('Ċ'), Some(b'\n'));
        assert_eq!(decode('!'), Some(b'!'));
        assert_eq!(decode('\u{0100}'), Some(0));
        assert_eq!(decode(' '), None);
        let mut seen: Vec<u8> = (0x21u32..=0x17F)
            .filter_map(char::from_u32)
            .filter_map(&decode)
            .collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 256);
    }

    #[test]
    fn byte_fallback_pieces() {
        assert_eq!(byte_fallback("<0x0A>"), Some(b'\n'));
        assert_eq!(byte_fallback("<0xFF>"), Some(0xFF));
        assert_eq!(byte_fallback("<0x0A"), None);
        assert_eq!(byte_fallback("<0xZZ>"), None);
        assert_eq!(byte_fallback("<0x123>"), None);
    }

    #[test]
    fn token_bytes_spell_what_each_family_encodes() {
        // SentencePiece (Phi-3) encodes a text with a leading `▁`.
        let families = [
            ("imp-v1-3b", ""),
            ("imp-v1-3b-msft", ""),
            ("imp-v1.5-2b-qwen1.5", ""),
            ("imp-v1.5-4b-phi3", " "),
        ];
        let texts = [
            "Hello world",
            "{\"a\": [1, -2.5e3], \"b\": null}",
            "naïve café ✓ 日本 🐱",
            "line\nbreak\ttab  two spaces",
        ];
        for (name, prefix) in families {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/models")
                .join(name);
            let tokenizer = ImpTokenizer::from_dir(&dir).unwrap();
            let words = token_bytes(&tokenizer, tokenizer.vocab_size() + 7).unwrap();
            assert!(words[tokenizer.vocab_size()..].iter().all(Vec::is_empty));
            for text in texts {
                let ids = tokenizer.encode(text).unwrap();
                let spelled: Vec<u8> = ids
                    .iter()
                    .flat_map(|&id| words[id as usize].clone())
                    .collect();
                assert_eq!(
                    String::from_utf8_lossy(&spelled),
                    format!("{prefix}{text}"),
                    "{name}: {ids:?}"
                );
            }
        }
    }

    #[test]
    fn masks_forbid_what_they_do_not_allow() {
        let mut vob = SimpleVob::alloc(40);
        vob.allow_token(1);
        vob.allow_token(33);
        let mask = TokenMask(vob);
        let mut logits = vec![0.5; 70];
        mask.apply(&mut logits);
        let allowed: Vec<usize> = (0..70).filter(|&i| logits[i] == 0.5).collect();
        assert_eq!(allowed, vec![1, 33]);
        assert!(mask.allows(33) && !mask.allows(2) && !mask.allows(69));
    }
}
