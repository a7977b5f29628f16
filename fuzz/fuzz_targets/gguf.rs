//! A GGUF file: header, metadata, tensor table and data, every tensor read dense and as a
//! matrix, the embedded configs and tokenizer.
#![no_main]

use candle_core::{DType, Device};
use imp::checkpoint::{GgufFile, TensorSource};
use imp::names::{Source, TensorShapes};
use imp_fuzz::put;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    imp_fuzz::count_caught_panics_as_errors();
    let path = put("model.gguf", Some(data));
    let Ok(file) = GgufFile::open(&path) else {
        return;
    };
    let names: Vec<String> = file.tensor_names().map(str::to_owned).collect();
    for name in &names {
        let _ = file.load_dense(name, DType::F32, &Device::Cpu);
        if let Ok(&[out, width]) = file.shape(name).as_deref() {
            let source = Source::Tensor(name.clone());
            let _ = file.matrix(&source, out, width, None, &Device::Cpu);
        }
    }
    let _ = file.storage_dtypes();
    let _ = file.stored_quantization();
    let _ = file.config_files();
    let _ = file.tokenizer();
});
