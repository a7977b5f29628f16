//! Each Imp model's tokenizer, loaded or rebuilt from the files in its Hugging Face folder so that
//! it encodes and decodes exactly as transformers' fast tokenizer does for the same folder.
//!
//! Three layouts occur: `tokenizer.json` (Phi-2, Phi-3), byte-level BPE `vocab.json` +
//! `merges.txt` (Qwen1.5 folders ship no `tokenizer.json`), and a SentencePiece `tokenizer.model`.
//! The last two are converted the way transformers' `convert_slow_tokenizer` does, then the added
//! tokens declared in `added_tokens.json` / `tokenizer_config.json` are added in id order.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, Model, SplitDelimiterBehavior, Tokenizer};

use crate::{Error, Result};

const TOKENIZER_JSON: &str = "tokenizer.json";
const VOCAB_JSON: &str = "vocab.json";
const MERGES_TXT: &str = "merges.txt";
const SENTENCEPIECE_MODEL: &str = "tokenizer.model";
pub(crate) const TOKENIZER_CONFIG: &str = "tokenizer_config.json";
const ADDED_TOKENS_JSON: &str = "added_tokens.json";
const LOOKED_FOR: &str = "looked for tokenizer.json, vocab.json + merges.txt, tokenizer.model";

/// Qwen2's pre-tokenizer split, as in transformers' `Qwen2Converter`: digits one by one, letters
/// with at most one leading non-letter, newlines kept apart from other whitespace.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// SentencePiece's word-boundary marker.
const SPIECE_UNDERLINE: &str = "▁";

/// transformers' `clean_up_tokenization`, applied after decoding when the folder's config asks.
const CLEAN_UP: [(&str, &str); 10] = [
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
];

/// A model's tokenizer plus what transformers layers on top of the `tokenizers` library.
#[derive(Clone)]
pub struct ImpTokenizer {
    inner: Tokenizer,
    /// `clean_up_tokenization_spaces` from `tokenizer_config.json` (true for Phi-2).
    clean_up_spaces: bool,
}

impl fmt::Debug for ImpTokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The inner tokenizer's own Debug would print the whole vocabulary.
        f.debug_struct("ImpTokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("clean_up_spaces", &self.clean_up_spaces)
            .finish_non_exhaustive()
    }
}

impl ImpTokenizer {
    /// Loads from a model folder: `tokenizer.json` if present; else `vocab.json` + `merges.txt`
    /// (GPT-2 or Qwen2 flavour, from `tokenizer_config.json`'s `tokenizer_class`); else
    /// `tokenizer.model` (SentencePiece BPE, converted as transformers' `LlamaConverter` does).
    /// The added and special tokens of `added_tokens.json` and `tokenizer_config.json` that the
    /// base files lack are then added with their declared ids.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::Tokenizer(format!(
                "{}: folder not found ({LOOKED_FOR})",
                dir.display()
            )));
        }
        let config: TokenizerConfig = read_optional_json(&dir.join(TOKENIZER_CONFIG))?;
        // SentencePiece models carry their own control tokens; the other layouts declare theirs
        // in the JSON files read below.
        let (mut inner, spm_tokens) = if dir.join(TOKENIZER_JSON).exists() {
            let path = dir.join(TOKENIZER_JSON);
            let tokenizer = parse_tokenizer_json(&read(&path)?).map_err(|e| invalid(&path, e))?;
            (tokenizer, BTreeMap::new())
        } else if dir.join(VOCAB_JSON).exists() && dir.join(MERGES_TXT).exists() {
            (byte_level_bpe(dir, &config)?, BTreeMap::new())
        } else if dir.join(SENTENCEPIECE_MODEL).exists() {
            let path = dir.join(SENTENCEPIECE_MODEL);
            let model = SentencePieceModel::parse(&read(&path)?)
                .map_err(|e| invalid(&path, format!("not a SentencePiece model: {e}")))?;
            let tokenizer = model.to_tokenizer(&config).map_err(|e| invalid(&path, e))?;
            (tokenizer, model.added_tokens())
        } else {
            return Err(Error::Tokenizer(format!(
                "{}: no tokenizer files ({LOOKED_FOR})",
                dir.display()
            )));
        };
        never_truncate_or_pad(&mut inner)?;
        let added_tokens_json: BTreeMap<String, u32> =
            read_optional_json(&dir.join(ADDED_TOKENS_JSON))?;
        add_declared_tokens(&mut inner, dir, &config, spm_tokens, added_tokens_json)?;

        Ok(Self {
            inner,
            // What transformers (4.46) assumes when the config is silent.
            clean_up_spaces: config.clean_up_tokenization_spaces.unwrap_or(false),
        })
    }

    /// The tokenizer as one `tokenizer.json` document, whatever files it was built from (what
    /// `imp quantize` embeds as `tokenizer.huggingface.json`).
    pub fn to_json(&self) -> Result<String> {
        self.inner
            .to_string(false)
            .map_err(|e| Error::Tokenizer(format!("cannot serialize the tokenizer: {e}")))
    }

    /// The tokenizer [`to_json`](Self::to_json) wrote, with the folder's `tokenizer_config.json`
    /// text for the decoding settings.
    pub fn from_json(json: &str, tokenizer_config: Option<&str>) -> Result<Self> {
        let mut inner = parse_tokenizer_json(json.as_bytes())
            .map_err(|e| Error::Tokenizer(format!("invalid tokenizer JSON: {e}")))?;
        never_truncate_or_pad(&mut inner)?;
        let config: TokenizerConfig = tokenizer_config
            .map(serde_json::from_str)
            .transpose()
            .map_err(|e| Error::Tokenizer(format!("invalid {TOKENIZER_CONFIG}: {e}")))?
            .unwrap_or_default();
        Ok(Self {
            inner,
            clean_up_spaces: config.clean_up_tokenization_spaces.unwrap_or(false),
        })
    }

    /// Makes sure these strings are special added tokens (adding them with the next free ids if
    /// absent, as transformers' `add_special_tokens` does), e.g. `["</s>", "<image>"]` for Phi-2
    /// models, `["<image>"]` for others. Returns their ids.
    pub fn ensure_special_tokens(&mut self, tokens: &[&str]) -> Result<Vec<u32>> {
        if tokens.iter().any(|t| t.is_empty()) {
            return Err(Error::Tokenizer("a special token cannot be empty".into()));
        }
        let added = self.inner.get_added_vocabulary();
        let missing: Vec<AddedToken> = tokens
            .iter()
            .filter(|t| !added.is_special_token(t))
            .map(|t| AddedToken::from(*t, true))
            .collect();
        if !missing.is_empty() {
            self.inner
                .add_special_tokens(missing)
                .map_err(|e| Error::Tokenizer(format!("cannot add special tokens: {e}")))?;
        }
        tokens
            .iter()
            .map(|t| {
                self.token_id(t)
                    .ok_or_else(|| Error::Tokenizer(format!("could not add special token {t:?}")))
            })
            .collect()
    }

    /// The id of a token of the vocabulary, added tokens included.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Plain encoding of one text chunk, never adding BOS/EOS (`add_special_tokens = false`);
    /// special tokens written in the text are recognised.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| Error::Tokenizer(format!("encoding failed: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Decodes as transformers' `decode` does: special tokens dropped when asked, ids outside the
    /// vocabulary ignored, and the config's `clean_up_tokenization_spaces` applied.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        let text = self
            .inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::Tokenizer(format!("decoding failed: {e}")))?;
        Ok(if self.clean_up_spaces {
            CLEAN_UP
                .iter()
                .fold(text, |text, (from, to)| text.replace(from, to))
        } else {
            text
        })
    }

    /// Number of tokens including added ones (transformers' `len(tokenizer)`).
    pub fn vocab_size(&self) -> usize {
        // What `Tokenizer::get_vocab_size(true)` returns, without building a map of every token:
        // added tokens count unless the model vocabulary already has them.
        let model = self.inner.get_model();
        let added = self.inner.get_added_vocabulary().get_vocab();
        model.get_vocab_size()
            + added
                .keys()
                .filter(|token| model.token_to_id(token).is_none())
                .count()
    }

    /// The underlying `tokenizers` tokenizer, e.g. for streaming decoding.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }
}

/// A prompt must never be cut or padded behind the caller's back; see also
/// [`WORD_CACHE_ENTRIES`].
fn never_truncate_or_pad(inner: &mut Tokenizer) -> Result<()> {
    inner
        .with_truncation(None)
        .map_err(|e| Error::Tokenizer(e.to_string()))?
        .with_padding(None);
    let mut model = inner.get_model().clone();
    model.resize_cache(WORD_CACHE_ENTRIES);
    inner.with_model(model);
    Ok(())
}

/// Words a BPE tokenizer remembers, per thread. tokenizers 0.23 keeps up to 10,000 per thread
/// and never frees them while the thread lives, each up to 8 KB (a SentencePiece-style BPE
/// treats a whole text segment as one word): under `scripts/soak.py`, `imp serve` grew by
/// 2 MB a minute, on its way to tens of MB per tokenizing thread. The first words seen (the
/// system prompt's, the template's) are the ones worth keeping.
const WORD_CACHE_ENTRIES: usize = 256;

/// The parts of `tokenizer_config.json` that change tokenization (any of them may be absent or
/// null).
#[derive(Default, Deserialize)]
#[serde(default)]
struct TokenizerConfig {
    tokenizer_class: Option<String>,
    add_prefix_space: Option<bool>,
    clean_up_tokenization_spaces: Option<bool>,
    /// Keyed by token id (as a string, JSON keys being strings).
    added_tokens_decoder: Option<BTreeMap<String, TokenSpec>>,
    bos_token: Option<TokenName>,
    eos_token: Option<TokenName>,
    unk_token: Option<TokenName>,
    sep_token: Option<TokenName>,
    pad_token: Option<TokenName>,
    cls_token: Option<TokenName>,
    mask_token: Option<TokenName>,
    additional_special_tokens: Option<Vec<TokenName>>,
}

impl TokenizerConfig {
    /// Tokens named in a special role; transformers makes all of them special added tokens.
    fn special_names(&self) -> impl Iterator<Item = &str> {
        [
            &self.bos_token,
            &self.eos_token,
            &self.unk_token,
            &self.sep_token,
            &self.pad_token,
            &self.cls_token,
            &self.mask_token,
        ]
        .into_iter()
        .flatten()
        .chain(self.additional_special_tokens.iter().flatten())
        .map(TokenName::content)
    }
}

#[derive(Deserialize)]
struct TokenSpec {
    content: String,
    #[serde(default)]
    single_word: bool,
    #[serde(default)]
    lstrip: bool,
    #[serde(default)]
    rstrip: bool,
    normalized: Option<bool>,
    #[serde(default)]
    special: bool,
}

impl TokenSpec {
    fn to_added_token(&self) -> AddedToken {
        AddedToken::from(self.content.clone(), self.special)
            .single_word(self.single_word)
            .lstrip(self.lstrip)
            .rstrip(self.rstrip)
            .normalized(self.normalized.unwrap_or(!self.special))
    }
}

/// A special-token field: a plain string or a serialized `AddedToken`.
#[derive(Deserialize)]
#[serde(untagged)]
enum TokenName {
    Plain(String),
    Full { content: String },
}

impl TokenName {
    fn content(&self) -> &str {
        match self {
            Self::Plain(content) | Self::Full { content } => content,
        }
    }
}

/// Adds, in id order as transformers does, the tokens declared by the SentencePiece model, then
/// `added_tokens.json`, then `tokenizer_config.json` (later files win for the same id), then the
/// config's special-role tokens. Tokens the base already has with the same flags are no-ops.
fn add_declared_tokens(
    inner: &mut Tokenizer,
    dir: &Path,
    config: &TokenizerConfig,
    mut declared: BTreeMap<u32, AddedToken>,
    added_tokens_json: BTreeMap<String, u32>,
) -> Result<()> {
    let special: Vec<&str> = config.special_names().collect();
    for (content, id) in added_tokens_json {
        let is_special = special.contains(&content.as_str());
        declared.insert(id, AddedToken::from(content, is_special));
    }
    let config_path = dir.join(TOKENIZER_CONFIG);
    for (key, spec) in config.added_tokens_decoder.iter().flatten() {
        let id = key.parse().map_err(|_| {
            invalid(
                &config_path,
                format!("added_tokens_decoder key {key:?} is not a token id"),
            )
        })?;
        let mut token = spec.to_added_token();
        token.special |= special.contains(&spec.content.as_str());
        declared.insert(id, token);
    }
    let mut tokens: Vec<AddedToken> = declared.values().cloned().collect();
    let already_added = inner.get_added_vocabulary().get_vocab();
    for name in special {
        if !already_added.contains_key(name) && !tokens.iter().any(|t| t.content == name) {
            tokens.push(AddedToken::from(name, true));
        }
    }
    inner
        .add_tokens(tokens)
        .map_err(|e| Error::Tokenizer(format!("cannot add the declared tokens: {e}")))?;

    for (id, token) in &declared {
        let actual = inner.token_to_id(&token.content);
        if actual != Some(*id) {
            return Err(Error::Tokenizer(format!(
                "{}: token {:?} is declared with id {id} (in {ADDED_TOKENS_JSON} or \
                 {TOKENIZER_CONFIG}) but the base vocabulary gives it {}",
                dir.display(),
                token.content,
                actual.map_or("no id".into(), |a| a.to_string()),
            )));
        }
    }
    Ok(())
}

/// Byte-level BPE from `vocab.json` + `merges.txt`, as transformers' `GPT2Converter` (GPT-2,
/// CodeGen) or `Qwen2Converter` builds it.
fn byte_level_bpe(dir: &Path, config: &TokenizerConfig) -> Result<Tokenizer> {
    let qwen2 = match config
        .tokenizer_class
        .as_deref()
        .map(|c| c.trim_end_matches("Fast"))
    {
        None | Some("GPT2Tokenizer" | "CodeGenTokenizer") => false,
        Some("Qwen2Tokenizer") => true,
        Some(other) => {
            return Err(invalid(
                &dir.join(TOKENIZER_CONFIG),
                format!(
                    "tokenizer_class {other:?} cannot be built from vocab.json + merges.txt \
                     (supported: GPT2Tokenizer, CodeGenTokenizer, Qwen2Tokenizer)"
                ),
            ))
        }
    };
    let vocab_path = dir.join(VOCAB_JSON);
    let vocab: Vocab =
        serde_json::from_slice(&read(&vocab_path)?).map_err(|e| invalid(&vocab_path, e))?;
    let merges_path = dir.join(MERGES_TXT);
    let merges = parse_merges(&read(&merges_path)?).map_err(|e| invalid(&merges_path, e))?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| invalid(&merges_path, e))?;

    let add_prefix_space = config.add_prefix_space.unwrap_or(false);
    let mut tokenizer = Tokenizer::new(bpe);
    if qwen2 {
        let split = Split::new(
            SplitPattern::Regex(QWEN2_SPLIT.into()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| Error::Tokenizer(format!("Qwen2 pre-tokenizer: {e}")))?;
        let byte_level = ByteLevel::new(add_prefix_space, true, false);
        tokenizer
            .with_normalizer(Some(NFC))
            .map_err(|e| Error::Tokenizer(format!("Qwen2 normaliser: {e}")))?
            .with_pre_tokenizer(Some(PreTokenizerSequence::new(vec![
                split.into(),
                byte_level.into(),
            ])));
    } else {
        tokenizer.with_pre_tokenizer(Some(ByteLevel::new(add_prefix_space, true, true)));
    }
    tokenizer.with_decoder(Some(ByteLevel::default()));
    Ok(tokenizer)
}

/// `merges.txt`: an optional `#version` line, then one `left right` pair per line, by rank.
fn parse_merges(bytes: &[u8]) -> std::result::Result<Vec<(String, String)>, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
    text.lines()
        .enumerate()
        .filter(|(i, line)| {
            let header = *i == 0 && line.starts_with("#version");
            !header && !line.trim().is_empty()
        })
        .map(|(i, line)| match line.trim().split_once(' ') {
            Some((left, right))
                if !left.is_empty() && !right.is_empty() && !right.contains(' ') =>
            {
                Ok((left.to_owned(), right.to_owned()))
            }
            _ => Err(format!("line {} is not a merge pair: {line:?}", i + 1)),
        })
        .collect()
}

/// The fields of SentencePiece's `ModelProto` (sentencepiece_model.proto) the conversion uses.
struct SentencePieceModel {
    pieces: Vec<Piece>,
    /// TrainerSpec.model_type: 1 unigram (the default), 2 BPE, 3 word, 4 char.
    model_type: u64,
    unk_piece: String,
    add_dummy_prefix: bool,
}

struct Piece {
    piece: String,
    score: f32,
    /// 1 normal (the default), 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    kind: u64,
}

const MODEL_TYPE_BPE: u64 = 2;
const PIECE_UNKNOWN: u64 = 2;
const PIECE_CONTROL: u64 = 3;
const PIECE_USER_DEFINED: u64 = 4;

impl SentencePieceModel {
    fn parse(bytes: &[u8]) -> std::result::Result<Self, String> {
        let mut model = Self {
            pieces: Vec::new(),
            model_type: 1,
            unk_piece: "<unk>".into(),
            add_dummy_prefix: true,
        };
        for_each_field(bytes, |field, value| {
            match (field, value) {
                (1, Value::Bytes(piece)) => model.pieces.push(Piece::parse(piece)?),
                (2, Value::Bytes(trainer)) => for_each_field(trainer, |field, value| {
                    match (field, value) {
                        (3, Value::Varint(v)) => model.model_type = v,
                        (45, Value::Bytes(s)) => model.unk_piece = utf8(s)?,
                        _ => {}
                    }
                    Ok(())
                })?,
                (3, Value::Bytes(normalizer)) => for_each_field(normalizer, |field, value| {
                    if let (3, Value::Varint(v)) = (field, value) {
                        model.add_dummy_prefix = v != 0;
                    }
                    Ok(())
                })?,
                _ => {}
            }
            Ok(())
        })?;
        if model.pieces.is_empty() {
            return Err("it has no pieces".into());
        }
        Ok(model)
    }

    /// Unknown and control pieces become special added tokens, user-defined ones plain added
    /// tokens, none of them normalized (transformers' `SpmConverter` plus the unk token).
    fn added_tokens(&self) -> BTreeMap<u32, AddedToken> {
        (0u32..)
            .zip(&self.pieces)
            .filter(|(_, p)| matches!(p.kind, PIECE_UNKNOWN | PIECE_CONTROL | PIECE_USER_DEFINED))
            .map(|(id, p)| {
                let special = p.kind != PIECE_USER_DEFINED;
                (
                    id,
                    AddedToken::from(p.piece.clone(), special).normalized(false),
                )
            })
            .collect()
    }

    /// The equivalent of transformers' `LlamaConverter` with the legacy normaliser (`▁` prepended
    /// to every text segment, spaces replaced by `▁`): that is what the `tokenizer.json` shipped
    /// with these models contains, so a folder tokenizes the same whichever file it is read from.
    fn to_tokenizer(&self, config: &TokenizerConfig) -> std::result::Result<Tokenizer, String> {
        if self.model_type != MODEL_TYPE_BPE {
            return Err(format!(
                "model type {} is not supported (only BPE, type 2)",
                self.model_type
            ));
        }
        let vocab: Vocab = (0u32..)
            .zip(&self.pieces)
            .map(|(id, p)| (p.piece.clone(), id))
            .collect();
        let merges = self.merges(&vocab);
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .unk_token(self.unk_piece.clone())
            .fuse_unk(true)
            .byte_fallback(true)
            .build()
            .map_err(|e| e.to_string())?;

        let add_prefix_space = config.add_prefix_space.unwrap_or(self.add_dummy_prefix);
        let replace = |from, to| Replace::new(from, to).map_err(|e| e.to_string());
        let mut normalizers = Vec::new();
        if add_prefix_space {
            normalizers.push(Prepend::new(SPIECE_UNDERLINE.into()).into());
        }
        normalizers.push(replace(" ", SPIECE_UNDERLINE)?.into());
        let mut decoders = vec![
            replace(SPIECE_UNDERLINE, " ")?.into(),
            ByteFallback::new().into(),
            Fuse::new().into(),
        ];
        if add_prefix_space {
            decoders.push(Strip::new(' ', 1, 0).into());
        }

        let mut tokenizer = Tokenizer::new(bpe);
        tokenizer
            .with_normalizer(Some(NormalizerSequence::new(normalizers)))
            .map_err(|e| format!("SentencePiece normaliser: {e}"))?
            .with_decoder(Some(DecoderSequence::new(decoders)));
        Ok(tokenizer)
    }

    /// BPE merges implied by the vocabulary: every split of a piece into two pieces, ordered by
    /// the piece's score (highest first) and, within a piece, by the halves' ids. This is
    /// transformers' `SentencePieceExtractor` ordering that produced the published Llama/Phi-3
    /// `tokenizer.json` merges (later transformers versions also order by the halves' lengths).
    fn merges(&self, vocab: &Vocab) -> Vec<(String, String)> {
        let mut merges: Vec<(&str, &str, f32)> = Vec::new();
        for p in &self.pieces {
            let start = merges.len();
            for (i, _) in p.piece.char_indices().skip(1) {
                let (left, right) = p.piece.split_at(i);
                if vocab.contains_key(left) && vocab.contains_key(right) {
                    merges.push((left, right, p.score));
                }
            }
            merges[start..].sort_by_key(|(left, right, _)| (vocab[*left], vocab[*right]));
        }
        // Stable, so equal scores keep the order above.
        merges.sort_by(|a, b| b.2.total_cmp(&a.2));
        merges
            .into_iter()
            .map(|(left, right, _)| (left.to_owned(), right.to_owned()))
            .collect()
    }
}

impl Piece {
    fn parse(bytes: &[u8]) -> std::result::Result<Self, String> {
        let mut piece = Self {
            piece: String::new(),
            score: 0.0,
            kind: 1,
        };
        for_each_field(bytes, |field, value| {
            match (field, value) {
                (1, Value::Bytes(s)) => piece.piece = utf8(s)?,
                (2, Value::Fixed32(b)) => piece.score = f32::from_le_bytes(b),
                (3, Value::Varint(v)) => piece.kind = v,
                _ => {}
            }
            Ok(())
        })?;
        Ok(piece)
    }
}

/// One protobuf field value, by wire type.
enum Value<'a> {
    Varint(u64),
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32([u8; 4]),
}

/// Calls `f` with each (field number, value) of a protobuf message.
fn for_each_field<'a>(
    mut buf: &'a [u8],
    mut f: impl FnMut(u64, Value<'a>) -> std::result::Result<(), String>,
) -> std::result::Result<(), String> {
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        let value = match key & 7 {
            0 => Value::Varint(varint(&mut buf)?),
            1 => {
                take(&mut buf, 8)?;
                Value::Fixed64
            }
            2 => {
                let len = usize::try_from(varint(&mut buf)?).map_err(|e| e.to_string())?;
                Value::Bytes(take(&mut buf, len)?)
            }
            5 => Value::Fixed32(take(&mut buf, 4)?.try_into().expect("took 4 bytes")),
            wire => return Err(format!("unsupported protobuf wire type {wire}")),
        };
        f(key >> 3, value)?;
    }
    Ok(())
}

fn varint(buf: &mut &[u8]) -> std::result::Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = buf.split_first().ok_or("truncated varint")?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("varint longer than 10 bytes".into())
}

fn take<'a>(buf: &mut &'a [u8], len: usize) -> std::result::Result<&'a [u8], String> {
    if buf.len() < len {
        return Err(format!(
            "field of {len} bytes runs past the end ({} left)",
            buf.len()
        ));
    }
    let (head, rest) = buf.split_at(len);
    *buf = rest;
    Ok(head)
}

fn utf8(bytes: &[u8]) -> std::result::Result<String, String> {
    String::from_utf8(bytes.to_vec()).map_err(|e| e.to_string())
}

/// A `tokenizer.json` document. tokenizers 0.23 panics (an `expect` in its decoder and
/// normaliser deserializers) on some malformed documents, a syntax error or a lone surrogate
/// escape inside `decoder` among them (found by fuzzing): the document is parsed as plain JSON
/// first, and a panic left is turned into an error.
fn parse_tokenizer_json(bytes: &[u8]) -> std::result::Result<Tokenizer, String> {
    serde_json::from_slice::<serde_json::Value>(bytes).map_err(|e| e.to_string())?;
    crate::error::parser_panic_as_error(|| Tokenizer::from_bytes(bytes))?.map_err(|e| e.to_string())
}

fn read(path: &Path) -> Result<Vec<u8>> {
    crate::files::read(path, crate::files::limits::TOKENIZER_BYTES)
}

/// A JSON file that may be absent (its default then), but must parse when present.
fn read_optional_json<T: DeserializeOwned + Default>(path: &Path) -> Result<T> {
    if !path.exists() {
        return Ok(T::default());
    }
    serde_json::from_slice(&read(path)?).map_err(|e| invalid(path, e))
}

fn invalid(path: &Path, error: impl fmt::Display) -> Error {
    Error::Tokenizer(format!("{}: {error}", path.display()))
}
