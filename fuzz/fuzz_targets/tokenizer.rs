//! The tokenizer files in each layout the loader accepts (`tokenizer.json`; `vocab.json` +
//! `merges.txt`; SentencePiece's `tokenizer.model`), with `tokenizer_config.json`, then a
//! text encoded and decoded.
#![no_main]

use imp::tokenizer::ImpTokenizer;
use imp_fuzz::{parts, put, scratch};

const FILES: [&str; 4] = ["tokenizer.json", "vocab.json", "merges.txt", "tokenizer.model"];

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    imp_fuzz::count_caught_panics_as_errors();
    let Some((&layout, data)) = data.split_first() else {
        return;
    };
    let [first, second, config, text] = parts(data, 4)[..] else {
        return;
    };
    let chosen: &[(&str, &[u8])] = match layout % 3 {
        0 => &[("tokenizer.json", first)],
        1 => &[("vocab.json", first), ("merges.txt", second)],
        _ => &[("tokenizer.model", first)],
    };
    for name in FILES {
        let bytes = chosen.iter().find(|(n, _)| *n == name).map(|&(_, b)| b);
        put(name, bytes);
    }
    put("tokenizer_config.json", (!config.is_empty()).then_some(config));
    let Ok(tokenizer) = ImpTokenizer::from_dir(scratch()) else {
        return;
    };
    if let Ok(ids) = tokenizer.encode(&String::from_utf8_lossy(text)) {
        let _ = tokenizer.decode(&ids, false);
        let _ = tokenizer.decode(&ids, true);
    }
});
