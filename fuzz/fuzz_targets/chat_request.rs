//! A chat-completions request body: checked, rendered in each family's template, and its
//! `data:` image URLs decoded (files and remote URLs are off, as in a default `imp serve`).
#![no_main]

use std::sync::OnceLock;

use imp::config::Family;
use imp::preprocess::decode_rgb;
use imp_server::{parse_request, ImageSources};

fn sources() -> &'static (tokio::runtime::Runtime, ImageSources) {
    static SOURCES: OnceLock<(tokio::runtime::Runtime, ImageSources)> = OnceLock::new();
    SOURCES.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        let sources = ImageSources::new(None, false, 1 << 20).expect("image sources");
        (runtime, sources)
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(request) = parse_request(data) else {
        return;
    };
    for family in [Family::Phi2, Family::Qwen2, Family::Phi3] {
        let prompt = request.messages.prompt(family);
        let _ = prompt.render(family, request.messages.images.len());
    }
    let (runtime, sources) = sources();
    for image in &request.messages.images {
        if let Ok(bytes) = runtime.block_on(sources.fetch(&image.url, &image.param)) {
            let _ = decode_rgb(&bytes.bytes, &image.param);
        }
    }
});
