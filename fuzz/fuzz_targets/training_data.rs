//! LLaVA training data (JSON or JSON Lines, as the first byte picks) read, then every sample's
//! ids and label masks built in each template with the real tokenizers.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use imp::tokenizer::ImpTokenizer;
use imp_fuzz::{model, MODELS};
use imp_train::data::{parse, Format};
use imp_train::template::{encode_with_limit, Template};

fn tokenizers() -> &'static [ImpTokenizer] {
    static TOKENIZERS: OnceLock<Vec<ImpTokenizer>> = OnceLock::new();
    TOKENIZERS.get_or_init(|| {
        MODELS
            .iter()
            .map(|name| ImpTokenizer::from_dir(&model(name)).expect("a fixture tokenizer"))
            .collect()
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&format, data)) = data.split_first() else {
        return;
    };
    let format = if format % 2 == 0 {
        Format::Json
    } else {
        Format::JsonLines
    };
    let text = String::from_utf8_lossy(data);
    let Ok(samples) = parse(&text, format, Path::new("fuzz.json")) else {
        return;
    };
    let templates = [Template::Phi2, Template::Qwen2, Template::Phi3];
    for sample in samples.iter().take(8) {
        for (tokenizer, template) in tokenizers().iter().zip(templates) {
            for template in [template, Template::Plain] {
                let bos = tokenizer.token_id("<s>").filter(|_| template == Template::Phi3);
                let _ = encode_with_limit(template, tokenizer, sample, 50_000, bos, Some(512));
            }
        }
    }
});
