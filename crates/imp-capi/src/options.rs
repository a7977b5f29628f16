//! The JSON options of `imp_model_load` and `imp_generate`: `imp run`'s option names in
//! snake_case, every one optional, an unknown name an error.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::Failure;

/// NULL, "" and `{}` all mean the defaults.
fn parse<T: DeserializeOwned + Default>(json: Option<&str>, what: &str) -> Result<T, Failure> {
    match json.map(str::trim) {
        None | Some("") => Ok(T::default()),
        Some(json) => {
            serde_json::from_str(json).map_err(|e| Failure::invalid(format!("{what}: {e}")))
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LoadParams {
    dtype: Option<String>,
    quant: Option<String>,
    llm_quant: Option<String>,
    vision_quant: Option<String>,
    projector_quant: Option<String>,
    image_size: Option<usize>,
    pool: Option<usize>,
    lora: Option<String>,
    kv_cache: Option<String>,
    threads: Option<usize>,
}

impl LoadParams {
    pub fn parse(json: Option<&str>) -> Result<Self, Failure> {
        parse(json, "options_json")
    }

    /// The model's own worker threads, if `threads` asks for them.
    pub fn thread_pool(&self) -> Result<Option<Arc<rayon::ThreadPool>>, Failure> {
        let Some(threads) = self.threads else {
            return Ok(None);
        };
        if threads == 0 {
            return Err(Failure::invalid("options_json: threads must be at least 1"));
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("imp-worker-{i}"))
            .build()
            .map(|pool| Some(Arc::new(pool)))
            .map_err(|e| {
                Failure(
                    crate::ImpStatus::Failed,
                    format!("starting {threads} threads: {e}"),
                )
            })
    }

    pub fn load_options(&self) -> Result<engine::LoadOptions, Failure> {
        let dtype = engine::dtype_from_name(self.dtype.as_deref().unwrap_or("f32"))
            .map_err(|e| Failure::invalid(format!("options_json: {e}")))?;
        let pool = self.pool.unwrap_or(1);
        if pool == 0 {
            return Err(Failure::invalid("options_json: pool must be at least 1"));
        }
        let quantization = engine::quant::Quantization::from_names(
            self.quant.as_deref(),
            self.llm_quant.as_deref(),
            self.vision_quant.as_deref(),
            self.projector_quant.as_deref(),
        )?;
        let adapter = self
            .lora
            .as_deref()
            .map(|dir| engine::adapter::Adapter::load(Path::new(dir), &candle_core::Device::Cpu))
            .transpose()?
            .map(Arc::new);
        let kv_cache = self
            .kv_cache
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|e| Failure::invalid(format!("options_json: {e}")))?;
        Ok(engine::LoadOptions {
            dtype,
            image_size: self.image_size,
            pool,
            quantization,
            adapter,
            kv_cache,
            ..Default::default()
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GenerateParams {
    max_new_tokens: usize,
    temperature: f32,
    top_k: Option<usize>,
    top_p: Option<f32>,
    min_p: Option<f32>,
    repetition_penalty: f32,
    seed: u64,
    stop: Vec<String>,
}

/// `imp run`'s defaults: greedy, up to 512 tokens.
impl Default for GenerateParams {
    fn default() -> Self {
        let sampling = engine::SamplingParams::default();
        Self {
            max_new_tokens: engine::GenerationOptions::default().max_new_tokens,
            temperature: sampling.temperature,
            top_k: sampling.top_k,
            top_p: sampling.top_p,
            min_p: sampling.min_p,
            repetition_penalty: sampling.repetition_penalty,
            seed: sampling.seed,
            stop: Vec::new(),
        }
    }
}

impl GenerateParams {
    pub fn parse(json: Option<&str>) -> Result<Self, Failure> {
        parse(json, "params_json")
    }

    /// The options of one generation, stopped when `stop` is set.
    pub fn generation_options(
        &self,
        stop: Arc<AtomicBool>,
    ) -> Result<engine::GenerationOptions, Failure> {
        if self.max_new_tokens == 0 {
            return Err(Failure::invalid(
                "params_json: max_new_tokens must be at least 1",
            ));
        }
        let sampling = engine::SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            seed: self.seed,
        };
        sampling.validate()?;
        Ok(engine::GenerationOptions {
            max_new_tokens: self.max_new_tokens,
            sampling,
            stop_strings: self.stop.clone(),
            cancel: Some(stop),
            ..Default::default()
        })
    }
}
