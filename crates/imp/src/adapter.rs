//! LoRA adapters in PEFT's file format, applied unmerged when a model is loaded with one.
//!
//! A folder holds `adapter_config.json` and `adapter_model.safetensors` (or PEFT 0.4's
//! `adapter_model.bin`), keyed `base_model.model.<module>.lora_{A,B}.weight` where `<module>`
//! is the stored weight's name without `.weight`; and, from the Imp recipe's stage 2,
//! `non_lora_trainables.safetensors` (or `.bin`) with the trained projector keyed
//! `base_model.model.<stored name>`. The module names are the checkpoint's own, so one adapter
//! fits every naming style through [`crate::names`].

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::{files, Error, Result};

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// What PEFT before 0.7 (and so the Imp reference, on PEFT 0.4) writes.
pub const WEIGHTS_FILE_PICKLE: &str = "adapter_model.bin";
pub const NON_LORA_FILE: &str = "non_lora_trainables.safetensors";
pub const NON_LORA_FILE_PICKLE: &str = "non_lora_trainables.bin";

/// PEFT's prefix for the wrapped model's parameters.
const PREFIX: &str = "base_model.model.";

/// The `adapter_config.json` keys imp reads and writes; PEFT 0.4 and later load it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterConfig {
    pub r: usize,
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f64,
    /// Leaf module names (`q_proj`, `lm_head`, ...).
    #[serde(default)]
    pub target_modules: Vec<String>,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
}

impl AdapterConfig {
    /// The factor on `B·A`: `alpha / r`, or `alpha / sqrt(r)` for rank-stabilised LoRA.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }

    /// The full JSON document PEFT writes, with the keys PEFT 0.4 requires.
    pub fn to_peft_json(&self) -> serde_json::Value {
        serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": self.base_model_name_or_path,
            "revision": null,
            "inference_mode": true,
            "r": self.r,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": self.lora_dropout,
            "target_modules": self.target_modules,
            "bias": "none",
            "fan_in_fan_out": false,
            "modules_to_save": null,
            "init_lora_weights": true,
            "layers_to_transform": null,
            "layers_pattern": null,
            "use_rslora": self.use_rslora,
            "use_dora": false,
        })
    }
}

/// One module's low-rank pair: `A: [r, in]`, `B: [out, r]`.
#[derive(Debug, Clone)]
pub struct LoraPair {
    pub a: Tensor,
    pub b: Tensor,
}

/// A LoRA adapter and the full tensors it replaces (the projector).
#[derive(Debug, Clone)]
pub struct Adapter {
    config: AdapterConfig,
    /// By module name, e.g. `model.layers.0.self_attn.q_proj`.
    lora: BTreeMap<String, LoraPair>,
    /// By stored tensor name, e.g. `model.mm_projector.0.weight`.
    replacements: BTreeMap<String, Tensor>,
    /// Input dropout while training; never applied at inference.
    training_dropout: f32,
}

impl Adapter {
    pub fn new(
        config: AdapterConfig,
        lora: BTreeMap<String, LoraPair>,
        replacements: BTreeMap<String, Tensor>,
    ) -> Result<Self> {
        if config.r == 0 {
            return Err(Error::InvalidArgument(
                "LoRA rank r must be at least 1".into(),
            ));
        }
        for (module, pair) in &lora {
            let (rank, _) = pair.a.dims2()?;
            let (_, b_rank) = pair.b.dims2()?;
            if rank != config.r || b_rank != config.r {
                return Err(Error::tensor(
                    module.as_str(),
                    format!(
                        "LoRA A {:?} and B {:?} do not have the configured rank r = {}",
                        pair.a.dims(),
                        pair.b.dims(),
                        config.r
                    ),
                ));
            }
        }
        Ok(Self {
            config,
            lora,
            replacements,
            training_dropout: 0.0,
        })
    }

    /// Reads a PEFT adapter folder; the projector of `non_lora_trainables` comes with it when
    /// present.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let config_path = dir.join(CONFIG_FILE);
        let text = files::read_to_string(&config_path, files::limits::CONFIG_BYTES)?;
        let config: AdapterConfig =
            serde_json::from_str(&text).map_err(|e| Error::config(&config_path, e.to_string()))?;
        let weights =
            read_tensors(dir, WEIGHTS_FILE, WEIGHTS_FILE_PICKLE, device)?.ok_or_else(|| {
                Error::io(
                    dir.join(WEIGHTS_FILE),
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("no adapter weights ({WEIGHTS_FILE} or {WEIGHTS_FILE_PICKLE})"),
                    ),
                )
            })?;
        let mut a = BTreeMap::new();
        let mut b = BTreeMap::new();
        for (key, tensor) in weights.tensors {
            let name = key.strip_prefix(PREFIX).unwrap_or(&key);
            // In-memory PEFT names carry the adapter name (`.default`); saved files do not.
            let name = name.replace(".default.weight", ".weight");
            if let Some(module) = name.strip_suffix(".lora_A.weight") {
                a.insert(module.to_owned(), tensor.to_dtype(DType::F32)?);
            } else if let Some(module) = name.strip_suffix(".lora_B.weight") {
                b.insert(module.to_owned(), tensor.to_dtype(DType::F32)?);
            } else if name.contains(".base_layer.") {
                // Newer PEFT saves the full lm_head beside its LoRA: the base's own copy.
                continue;
            } else {
                return Err(Error::tensor(
                    key,
                    format!(
                        "in {}: not a LoRA tensor (`*.lora_A.weight` / `*.lora_B.weight`)",
                        weights.path.display()
                    ),
                ));
            }
        }
        let mut lora = BTreeMap::new();
        for (module, a) in a {
            let b = b.remove(&module).ok_or_else(|| {
                Error::tensor(
                    format!("{module}.lora_B.weight"),
                    format!(
                        "missing in {} (its lora_A is there)",
                        weights.path.display()
                    ),
                )
            })?;
            lora.insert(module, LoraPair { a, b });
        }
        if let Some(module) = b.keys().next() {
            return Err(Error::tensor(
                format!("{module}.lora_A.weight"),
                format!(
                    "missing in {} (its lora_B is there)",
                    weights.path.display()
                ),
            ));
        }
        let replacements = match read_tensors(dir, NON_LORA_FILE, NON_LORA_FILE_PICKLE, device)? {
            Some(file) => file
                .tensors
                .into_iter()
                .map(|(key, tensor)| {
                    // The reference strips `base_model.` and then `model.` from the wrapped
                    // ImpForCausalLM's names, leaving the checkpoint's own.
                    let name = key.strip_prefix(PREFIX).unwrap_or(&key).to_owned();
                    (name, tensor)
                })
                .collect(),
            None => BTreeMap::new(),
        };
        Self::new(config, lora, replacements)
    }

    /// Writes the folder PEFT's `PeftModel.from_pretrained` loads, plus
    /// `non_lora_trainables.safetensors` when the adapter replaces tensors.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut tensors = HashMap::new();
        for (module, pair) in &self.lora {
            tensors.insert(lora_key(module, 'A'), pair.a.clone());
            tensors.insert(lora_key(module, 'B'), pair.b.clone());
        }
        write_safetensors(&tensors, &dir.join(WEIGHTS_FILE))?;
        if !self.replacements.is_empty() {
            let tensors = self
                .replacements
                .iter()
                .map(|(name, t)| (format!("{PREFIX}{name}"), t.clone()))
                .collect();
            write_safetensors(&tensors, &dir.join(NON_LORA_FILE))?;
        }
        let config_path = dir.join(CONFIG_FILE);
        let json = serde_json::to_string_pretty(&self.config.to_peft_json())
            .map_err(|e| Error::config(&config_path, e.to_string()))?;
        std::fs::write(&config_path, json + "\n").map_err(|e| Error::io(&config_path, e))
    }

    /// Drops its input at this rate while the adapter's weights are trained.
    pub fn with_training_dropout(mut self, rate: f32) -> Self {
        self.training_dropout = rate;
        self
    }

    pub fn training_dropout(&self) -> f32 {
        self.training_dropout
    }

    pub fn config(&self) -> &AdapterConfig {
        &self.config
    }

    /// Records the base model in `adapter_config.json`, as PEFT does.
    pub fn set_base_model(&mut self, name: impl Into<String>) {
        self.config.base_model_name_or_path = Some(name.into());
    }

    /// The pair adapting the module whose weight is stored as `<module>.weight`.
    pub fn lora(&self, module: &str) -> Option<&LoraPair> {
        self.lora.get(module)
    }

    pub fn lora_modules(&self) -> impl Iterator<Item = (&str, &LoraPair)> {
        self.lora.iter().map(|(m, p)| (m.as_str(), p))
    }

    /// The tensor standing in for the checkpoint's `name`.
    pub fn replacement(&self, name: &str) -> Option<&Tensor> {
        self.replacements.get(name)
    }

    pub fn replacements(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.replacements.iter().map(|(n, t)| (n.as_str(), t))
    }
}

/// The key PEFT stores a module's `lora_A` (`which = 'A'`) or `lora_B` under.
pub fn lora_key(module: &str, which: char) -> String {
    format!("{PREFIX}{module}.lora_{which}.weight")
}

struct TensorFile {
    path: PathBuf,
    tensors: Vec<(String, Tensor)>,
}

/// The safetensors file, else its torch-pickle twin, else `None`.
fn read_tensors(
    dir: &Path,
    safetensors: &str,
    pickle: &str,
    device: &Device,
) -> Result<Option<TensorFile>> {
    let path = dir.join(safetensors);
    if path.exists() {
        let tensors = candle_core::safetensors::load_buffer(&files::map(&path)?, device)
            .map_err(|e| Error::config(&path, format!("not a readable safetensors file: {e}")))?;
        return Ok(Some(TensorFile {
            path,
            tensors: tensors.into_iter().collect(),
        }));
    }
    let path = dir.join(pickle);
    if path.exists() {
        // The zip reader opens the file itself; this refuses a FIFO or device first.
        files::open_regular(&path)?;
        let tensors = candle_core::pickle::read_all(&path)
            .map_err(|e| Error::config(&path, format!("not a readable torch pickle: {e}")))?;
        let tensors = tensors
            .into_iter()
            .map(|(name, t)| Ok((name, t.to_device(device)?)))
            .collect::<Result<_>>()?;
        return Ok(Some(TensorFile { path, tensors }));
    }
    Ok(None)
}

/// Writes tensors as safetensors through a temporary file, so that an interrupted save never
/// leaves a truncated file under the final name.
pub fn write_safetensors(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let partial = path.with_extension("safetensors.partial");
    candle_core::safetensors::save(tensors, &partial)
        .map_err(|e| Error::io(&partial, std::io::Error::other(e.to_string())))?;
    std::fs::rename(&partial, path).map_err(|e| Error::io(path, e))
}
