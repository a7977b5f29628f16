//! `config.json`, `generation_config.json` and a SigLIP sub-folder config, parsed and checked
//! against the tensors of a real (tiny) checkpoint of the family the first byte picks.
#![no_main]

use std::sync::OnceLock;

use imp::checkpoint::Folder;
use imp::config::{ConfigFiles, ImpConfig};
use imp_fuzz::{model, parts, MODELS};

fn checkpoints() -> &'static [Folder] {
    static FOLDERS: OnceLock<Vec<Folder>> = OnceLock::new();
    FOLDERS.get_or_init(|| {
        MODELS
            .iter()
            .chain(&["imp-v1-3b-msft", "imp-v1.5-3b-196"])
            .map(|name| Folder::open(&model(name)).expect("a fixture model"))
            .collect()
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&pick, data)) = data.split_first() else {
        return;
    };
    let checkpoint = &checkpoints()[pick as usize % checkpoints().len()];
    let [config, generation, vision] = parts(data, 3)[..] else {
        return;
    };
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let files = ConfigFiles {
        root: "fuzz".into(),
        config: text(config),
        generation: (!generation.is_empty()).then(|| text(generation)),
        vision: (!vision.is_empty()).then(|| ("siglip/config.json".into(), text(vision))),
    };
    let _ = ImpConfig::load(&files, checkpoint);
});
