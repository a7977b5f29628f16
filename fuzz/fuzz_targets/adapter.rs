//! A PEFT adapter folder (`adapter_config.json`, `adapter_model.safetensors`,
//! `non_lora_trainables.safetensors`) loaded, and attached to a tiny Phi-2 model when it loads.
#![no_main]

use std::sync::{Arc, OnceLock};

use candle_core::Device;
use imp::adapter::Adapter;
use imp::checkpoint::Folder;
use imp::{ImpModel, LoadOptions};
use imp_fuzz::{model, parts, put, scratch};

fn base() -> &'static Folder {
    static BASE: OnceLock<Folder> = OnceLock::new();
    BASE.get_or_init(|| Folder::open(&model("imp-v1.5-3b-phi2")).expect("a fixture model"))
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let [config, weights, projector] = parts(data, 3)[..] else {
        return;
    };
    put("adapter_config.json", Some(config));
    put("adapter_model.safetensors", Some(weights));
    put(
        "non_lora_trainables.safetensors",
        (!projector.is_empty()).then_some(projector),
    );
    let Ok(adapter) = Adapter::load(scratch(), &Device::Cpu) else {
        return;
    };
    let options = LoadOptions {
        adapter: Some(Arc::new(adapter)),
        ..LoadOptions::default()
    };
    let _ = ImpModel::from_source(base(), &options);
});
