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
        let prompt = request.conversation.prompt(family);
        let _ = prompt.render(family, request.conversation.image_urls.len());
    }
    let (runtime, sources) = sources();
    for (url, param) in &request.conversation.image_urls {
        if let Ok(image) = runtime.block_on(sources.fetch(url, param)) {
            let _ = decode_rgb(&image.bytes, param);
        }
    }
});
