//! A model folder: the safetensors index, one shard (header and data), and `config.json`,
//! opened, every tensor read, and the config checked against the tensors.
#![no_main]

use candle_core::{DType, Device};
use imp::checkpoint::{Folder, TensorSource};
use imp::config::ImpConfig;
use imp::names::TensorShapes;
use imp_fuzz::{parts, put, scratch};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let [index, shard, config] = parts(data, 3)[..] else {
        return;
    };
    put("model.safetensors.index.json", (!index.is_empty()).then_some(index));
    put("model.safetensors", Some(shard));
    put("config.json", Some(config));
    let Ok(folder) = Folder::open(scratch()) else {
        return;
    };
    let names: Vec<String> = folder.tensor_names().map(str::to_owned).collect();
    for name in &names {
        let _ = folder.shape(name);
        let _ = folder.load_dense(name, DType::F32, &Device::Cpu);
    }
    let _ = folder.storage_dtypes();
    if let Ok(files) = folder.config_files() {
        let _ = ImpConfig::load(&files, &folder);
    }
});
