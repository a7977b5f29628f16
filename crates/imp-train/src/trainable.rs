//! What a run trains: LoRA pairs on the language model's linear layers (lm_head included, as
//! the Imp recipe has it) and the projector, held as candle `Var`s that the model reads
//! through an [`Adapter`], so an optimizer update is what the next forward pass sees.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device, Tensor, Var};
use imp::adapter::{lora_key, Adapter, AdapterConfig, LoraPair};
use imp::checkpoint::TensorSource;
use imp::names::{NamingStyle, TensorShapes};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{Error, Result};

/// Which LoRA to build.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// Leaf names (`q_proj`, `fc1`, ...); empty: every linear layer of the language model.
    pub targets: Vec<String>,
    pub lm_head: bool,
}

/// A trained tensor and where it lives in the model.
pub struct Trainable {
    /// The key it is saved under: PEFT's for LoRA, `base_model.model.<name>` for the
    /// projector.
    pub key: String,
    pub var: Var,
    pub kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Lora,
    ProjectorWeight,
    ProjectorBias,
}

pub struct Trainables {
    pub params: Vec<Trainable>,
    lora_config: Option<AdapterConfig>,
    /// Module name -> indices of its A and B in `params`.
    lora_modules: BTreeMap<String, (usize, usize)>,
    /// Stored projector tensor name -> index in `params`.
    projector: BTreeMap<String, usize>,
}

/// The stored names of the language model's linear weights: every decoder layer's and
/// lm_head's, each stored matrix on its own (q, k and v apart where the style stores them so).
pub fn language_model_linears(style: NamingStyle, layers: usize) -> Vec<String> {
    let mut names = Vec::new();
    for i in 0..layers {
        let n = style.decoder_layer(i);
        for linear in [n.qkv, n.attn_out, n.mlp_in, n.mlp_out] {
            names.extend(linear.weight.names().into_iter().map(str::to_owned));
        }
    }
    names.extend(
        style
            .decoder()
            .lm_head
            .weight
            .names()
            .into_iter()
            .map(str::to_owned),
    );
    names
}

/// A module that takes LoRA: its name (the stored weight's without `.weight`) and shape.
pub struct LoraModule {
    pub name: String,
    pub out: usize,
    pub fan_in: usize,
}

/// The modules `spec` selects, in layer order; a target naming no layer is an error.
pub fn lora_modules(
    shapes: &dyn TensorShapes,
    style: NamingStyle,
    layers: usize,
    spec: &LoraSpec,
) -> Result<Vec<LoraModule>> {
    let lm_head: Vec<String> = style
        .decoder()
        .lm_head
        .weight
        .names()
        .into_iter()
        .map(|n| n.trim_end_matches(".weight").to_owned())
        .collect();
    let mut modules = Vec::new();
    let mut leaves = Vec::new();
    for name in language_model_linears(style, layers) {
        let module = name.trim_end_matches(".weight").to_owned();
        let wanted = if lm_head.contains(&module) {
            spec.lm_head
        } else {
            spec.targets.is_empty() || spec.targets.iter().any(|t| t == leaf(&module))
        };
        if !wanted {
            continue;
        }
        let shape = shapes.shape(&name)?;
        let [out, fan_in] = shape[..] else {
            return Err(Error::InvalidArgument(format!("`{name}` is not a matrix")));
        };
        leaves.push(leaf(&module).to_owned());
        modules.push(LoraModule {
            name: module,
            out,
            fan_in,
        });
    }
    if let Some(missing) = spec.targets.iter().find(|t| !leaves.contains(t)) {
        return Err(Error::InvalidArgument(format!(
            "LoRA target `{missing}` names no linear layer of this {} language model \
             (its layers: {})",
            style.label(),
            leaf_names(style, layers).join(", ")
        )));
    }
    Ok(modules)
}

fn leaf(module: &str) -> &str {
    module.rsplit('.').next().unwrap_or(module)
}

impl Trainables {
    /// Fresh LoRA pairs (PEFT's init: A kaiming-uniform with a = sqrt(5), B zero) from `seed`,
    /// for the modules `spec` selects; `None` trains no LoRA (stage 1).
    pub fn new(
        source: &dyn TensorSource,
        style: NamingStyle,
        layers: usize,
        spec: Option<&LoraSpec>,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let mut trainables = Self {
            params: Vec::new(),
            lora_config: None,
            lora_modules: BTreeMap::new(),
            projector: BTreeMap::new(),
        };
        let Some(spec) = spec else {
            return Ok(trainables);
        };
        let modules = lora_modules(source, style, layers, spec)?;
        let mut rng = StdRng::seed_from_u64(seed);
        let mut selected_leaves = Vec::new();
        for LoraModule { name, out, fan_in } in modules {
            let bound = 1.0 / (fan_in as f64).sqrt();
            let a: Vec<f32> = (0..spec.r * fan_in)
                .map(|_| rng.random_range(-bound..bound) as f32)
                .collect();
            let a = Tensor::from_vec(a, (spec.r, fan_in), device)?;
            let b = Tensor::zeros((out, spec.r), DType::F32, device)?;
            trainables.add_lora(&name, a, b)?;
            let leaf = leaf(&name).to_owned();
            if !selected_leaves.contains(&leaf) {
                selected_leaves.push(leaf);
            }
        }
        trainables.lora_config = Some(AdapterConfig {
            r: spec.r,
            lora_alpha: spec.alpha,
            lora_dropout: spec.dropout,
            target_modules: selected_leaves,
            use_rslora: false,
            base_model_name_or_path: None,
        });
        Ok(trainables)
    }

    /// Starts the LoRA from a saved adapter instead (continued training, parity tests).
    pub fn from_adapter(adapter: &Adapter, device: &Device) -> Result<Self> {
        let mut trainables = Self {
            params: Vec::new(),
            lora_config: Some(adapter.config().clone()),
            lora_modules: BTreeMap::new(),
            projector: BTreeMap::new(),
        };
        for (module, pair) in adapter.lora_modules() {
            trainables.add_lora(
                module,
                pair.a.to_device(device)?.to_dtype(DType::F32)?,
                pair.b.to_device(device)?.to_dtype(DType::F32)?,
            )?;
        }
        for (name, tensor) in adapter.replacements() {
            trainables.add_projector(name, tensor)?;
        }
        Ok(trainables)
    }

    fn add_lora(&mut self, module: &str, a: Tensor, b: Tensor) -> Result<()> {
        let index = self.params.len();
        for (which, tensor) in [('A', a), ('B', b)] {
            self.params.push(Trainable {
                key: lora_key(module, which),
                var: Var::from_tensor(&tensor)?,
                kind: Kind::Lora,
            });
        }
        self.lora_modules
            .insert(module.to_owned(), (index, index + 1));
        Ok(())
    }

    /// Trains the projector too, starting from `tensor` for its stored `name` (weights and
    /// biases of both layers); a name already present is replaced.
    pub fn add_projector(&mut self, name: &str, tensor: &Tensor) -> Result<()> {
        let var = Var::from_tensor(&tensor.to_dtype(DType::F32)?)?;
        let kind = if name.ends_with(".bias") {
            Kind::ProjectorBias
        } else {
            Kind::ProjectorWeight
        };
        let trainable = Trainable {
            key: format!("base_model.model.{name}"),
            var,
            kind,
        };
        match self.projector.get(name) {
            Some(&index) => self.params[index] = trainable,
            None => {
                self.projector.insert(name.to_owned(), self.params.len());
                self.params.push(trainable);
            }
        }
        Ok(())
    }

    pub fn has_projector(&self) -> bool {
        !self.projector.is_empty()
    }

    pub fn lora_config(&self) -> Option<&AdapterConfig> {
        self.lora_config.as_ref()
    }

    /// The adapter the model is loaded with: it shares the variables' storage, so it always
    /// shows their current values.
    pub fn adapter(&self, training_dropout: f32) -> Result<Adapter> {
        let lora = self
            .lora_modules
            .iter()
            .map(|(module, &(a, b))| {
                let pair = LoraPair {
                    a: self.params[a].var.as_tensor().clone(),
                    b: self.params[b].var.as_tensor().clone(),
                };
                (module.clone(), pair)
            })
            .collect();
        let replacements = self
            .projector
            .iter()
            .map(|(name, &i)| (name.clone(), self.params[i].var.as_tensor().clone()))
            .collect();
        // A projector-only run has no LoRA config; rank 1 only satisfies the type.
        let config = self.lora_config.clone().unwrap_or(AdapterConfig {
            r: 1,
            lora_alpha: 1.0,
            lora_dropout: 0.0,
            target_modules: Vec::new(),
            use_rslora: false,
            base_model_name_or_path: None,
        });
        Ok(Adapter::new(config, lora, replacements)?.with_training_dropout(training_dropout))
    }

    /// Current values by key, for checkpoints and parity checks.
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        self.params
            .iter()
            .map(|p| (p.key.clone(), p.var.as_tensor().clone()))
            .collect()
    }

    /// Sets every variable from a checkpoint's tensors.
    pub fn restore(&self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        for param in &self.params {
            let tensor = tensors.get(&param.key).ok_or_else(|| {
                Error::InvalidArgument(format!("the checkpoint lacks `{}`", param.key))
            })?;
            if tensor.dims() != param.var.dims() {
                return Err(Error::InvalidArgument(format!(
                    "the checkpoint's `{}` has shape {:?}, the run trains {:?}",
                    param.key,
                    tensor.dims(),
                    param.var.dims()
                )));
            }
            param.var.set(&tensor.to_dtype(param.var.dtype())?)?;
        }
        Ok(())
    }
}

fn leaf_names(style: NamingStyle, layers: usize) -> Vec<String> {
    let mut leaves: Vec<String> = language_model_linears(style, layers)
        .iter()
        .map(|n| leaf(n.trim_end_matches(".weight")).to_owned())
        .collect();
    leaves.dedup();
    leaves.sort();
    leaves.dedup();
    leaves
}
