//! The one place that knows each checkpoint style's tensor names.
//!
//! Model code asks for logical weights (a layer's fused qkv projection, its MLP input, ...) and
//! gets back where they are stored. Separate q/k/v (HF Phi, Qwen2) and gate/up (Qwen2) matrices
//! are stacked into the fused layout that phi-msft and Phi-3 store, so one decoder definition
//! serves every style with one matmul per projection. Names say where weights are, never how
//! a block is built: that is `config::Family`'s to state.

use std::fmt;
use std::path::Path;

use crate::quant::Part;
use crate::{Error, Result};

/// What is stored, without the data: enough to tell a naming style and to read the sizes a
/// config leaves out. Every `checkpoint::TensorSource` is one.
pub trait TensorShapes {
    /// The folder or file the tensors come from, for messages.
    fn location(&self) -> &Path;
    fn contains(&self, name: &str) -> bool;
    fn tensor_names(&self) -> Box<dyn Iterator<Item = &str> + '_>;
    /// The shape the model sees (a GGUF block format's zero padding excluded).
    fn shape(&self, name: &str) -> Result<Vec<usize>>;
}

/// Where a logical weight is stored: one tensor, or several stacked along rows (dim 0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Tensor(String),
    Rows(Vec<String>),
}

impl Source {
    /// The stored tensor names, in row order.
    pub fn names(&self) -> Vec<&str> {
        match self {
            Source::Tensor(name) => vec![name.as_str()],
            Source::Rows(names) => names.iter().map(String::as_str).collect(),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Tensor(name) => f.write_str(name),
            Source::Rows(names) => write!(f, "{}", names.join(" + ")),
        }
    }
}

/// A linear layer's weight and optional bias.
#[derive(Clone, Debug)]
pub struct LinearNames {
    pub weight: Source,
    pub bias: Option<Source>,
}

/// A normalisation layer's scale and optional shift (LayerNorm has one, RMSNorm not).
#[derive(Clone, Debug)]
pub struct NormNames {
    pub weight: String,
    pub bias: Option<String>,
}

pub struct DecoderLayerNames {
    pub attn_norm: NormNames,
    /// `None` for Phi-2's parallel block, whose attention and MLP share one norm.
    pub mlp_norm: Option<NormNames>,
    /// Rows: all query heads, then key heads, then value heads.
    pub qkv: LinearNames,
    pub attn_out: LinearNames,
    /// fc1 (Phi-2) or gate rows then up rows (Qwen2, Phi-3).
    pub mlp_in: LinearNames,
    pub mlp_out: LinearNames,
}

pub struct DecoderNames {
    pub embed_tokens: String,
    pub final_norm: NormNames,
    pub lm_head: LinearNames,
}

pub struct VisionLayerNames {
    pub norm1: NormNames,
    pub qkv: LinearNames,
    pub attn_out: LinearNames,
    pub norm2: NormNames,
    pub fc1: LinearNames,
    pub fc2: LinearNames,
}

pub struct VisionEmbeddingNames {
    pub patch_weight: String,
    pub patch_bias: String,
    pub position: String,
}

pub struct ProjectorNames {
    pub fc1: LinearNames,
    pub fc2: LinearNames,
}

/// How a checkpoint names its tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NamingStyle {
    /// Phi-2 in transformers' `PhiForCausalLM` layout (imp-v1-3b and Imp-v1.5-3B-Phi2 main).
    PhiHf,
    /// Phi-2 in Microsoft's original layout: `transformer.h.*`, fused `Wqkv`, `lm_head.ln`
    /// (Imp-v1.5-3B-196, old imp-v1-3b revisions).
    PhiMsft,
    /// Qwen2 (Imp-v1.5-2B-Qwen1.5).
    Qwen2,
    /// Phi-3 with fused `qkv_proj` / `gate_up_proj` (Imp-v1.5-4B-Phi3).
    Phi3,
}

fn tensor(name: String) -> Source {
    Source::Tensor(name)
}

fn linear(prefix: &str, bias: bool) -> LinearNames {
    LinearNames {
        weight: tensor(format!("{prefix}.weight")),
        bias: bias.then(|| tensor(format!("{prefix}.bias"))),
    }
}

fn stacked(prefix: &str, parts: &[&str], bias: bool) -> LinearNames {
    let names = |suffix: &str| {
        Source::Rows(
            parts
                .iter()
                .map(|p| format!("{prefix}.{p}.{suffix}"))
                .collect(),
        )
    };
    LinearNames {
        weight: names("weight"),
        bias: bias.then(|| names("bias")),
    }
}

fn layer_norm(prefix: &str) -> NormNames {
    NormNames {
        weight: format!("{prefix}.weight"),
        bias: Some(format!("{prefix}.bias")),
    }
}

fn rms_norm(prefix: &str) -> NormNames {
    NormNames {
        weight: format!("{prefix}.weight"),
        bias: None,
    }
}

impl NamingStyle {
    /// Tells the style from the stored tensor names, checked against the config's `model_type`.
    pub fn detect(checkpoint: &dyn TensorShapes, model_type: &str) -> Result<Self> {
        let msft = checkpoint.contains("transformer.embd.wte.weight");
        let hf = checkpoint.contains("model.embed_tokens.weight");
        let style = match (model_type, msft, hf) {
            ("imp", true, _) => Self::PhiMsft,
            ("imp", false, true) => Self::PhiHf,
            ("imp_qwen2", _, true) => Self::Qwen2,
            ("imp_phi3", _, true) => Self::Phi3,
            _ => {
                return Err(Error::Checkpoint {
                    path: checkpoint.location().to_path_buf(),
                    message: format!(
                        "tensor names do not match model_type `{model_type}`: expected \
                         `model.embed_tokens.weight` or (Phi-2, phi-msft style) \
                         `transformer.embd.wte.weight`"
                    ),
                })
            }
        };
        Ok(style)
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::PhiHf => "phi-hf (transformers PhiForCausalLM names)",
            Self::PhiMsft => "phi-msft (transformer.h.*, fused Wqkv)",
            Self::Qwen2 => "qwen2 (transformers Qwen2ForCausalLM names)",
            Self::Phi3 => "phi3 (fused qkv_proj / gate_up_proj)",
        }
    }

    fn root(self) -> &'static str {
        match self {
            Self::PhiMsft => "transformer",
            _ => "model",
        }
    }

    pub fn decoder(self) -> DecoderNames {
        match self {
            Self::PhiMsft => DecoderNames {
                embed_tokens: "transformer.embd.wte.weight".into(),
                final_norm: layer_norm("lm_head.ln"),
                lm_head: linear("lm_head.linear", true),
            },
            Self::PhiHf => DecoderNames {
                embed_tokens: "model.embed_tokens.weight".into(),
                final_norm: layer_norm("model.final_layernorm"),
                lm_head: linear("lm_head", true),
            },
            Self::Qwen2 | Self::Phi3 => DecoderNames {
                embed_tokens: "model.embed_tokens.weight".into(),
                final_norm: rms_norm("model.norm"),
                lm_head: linear("lm_head", false),
            },
        }
    }

    pub fn decoder_layer(self, index: usize) -> DecoderLayerNames {
        match self {
            Self::PhiMsft => {
                let p = format!("{}{index}", self.decoder_layer_prefix());
                DecoderLayerNames {
                    attn_norm: layer_norm(&format!("{p}.ln")),
                    mlp_norm: None,
                    qkv: linear(&format!("{p}.mixer.Wqkv"), true),
                    attn_out: linear(&format!("{p}.mixer.out_proj"), true),
                    mlp_in: linear(&format!("{p}.mlp.fc1"), true),
                    mlp_out: linear(&format!("{p}.mlp.fc2"), true),
                }
            }
            Self::PhiHf => {
                let p = format!("{}{index}", self.decoder_layer_prefix());
                DecoderLayerNames {
                    attn_norm: layer_norm(&format!("{p}.input_layernorm")),
                    mlp_norm: None,
                    qkv: stacked(
                        &format!("{p}.self_attn"),
                        &["q_proj", "k_proj", "v_proj"],
                        true,
                    ),
                    attn_out: linear(&format!("{p}.self_attn.dense"), true),
                    mlp_in: linear(&format!("{p}.mlp.fc1"), true),
                    mlp_out: linear(&format!("{p}.mlp.fc2"), true),
                }
            }
            Self::Qwen2 => {
                let p = format!("{}{index}", self.decoder_layer_prefix());
                DecoderLayerNames {
                    attn_norm: rms_norm(&format!("{p}.input_layernorm")),
                    mlp_norm: Some(rms_norm(&format!("{p}.post_attention_layernorm"))),
                    qkv: stacked(
                        &format!("{p}.self_attn"),
                        &["q_proj", "k_proj", "v_proj"],
                        true,
                    ),
                    attn_out: linear(&format!("{p}.self_attn.o_proj"), false),
                    mlp_in: stacked(&format!("{p}.mlp"), &["gate_proj", "up_proj"], false),
                    mlp_out: linear(&format!("{p}.mlp.down_proj"), false),
                }
            }
            Self::Phi3 => {
                let p = format!("{}{index}", self.decoder_layer_prefix());
                DecoderLayerNames {
                    attn_norm: rms_norm(&format!("{p}.input_layernorm")),
                    mlp_norm: Some(rms_norm(&format!("{p}.post_attention_layernorm"))),
                    qkv: linear(&format!("{p}.self_attn.qkv_proj"), false),
                    attn_out: linear(&format!("{p}.self_attn.o_proj"), false),
                    mlp_in: linear(&format!("{p}.mlp.gate_up_proj"), false),
                    mlp_out: linear(&format!("{p}.mlp.down_proj"), false),
                }
            }
        }
    }

    /// Prefix of the SigLIP vision model inside the Imp checkpoint.
    pub fn vision_prefix(self) -> String {
        format!("{}.vision_tower.vision_tower.vision_model.", self.root())
    }

    pub fn vision_embeddings(self) -> VisionEmbeddingNames {
        let p = self.vision_prefix();
        VisionEmbeddingNames {
            patch_weight: format!("{p}embeddings.patch_embedding.weight"),
            patch_bias: format!("{p}embeddings.patch_embedding.bias"),
            position: format!("{p}embeddings.position_embedding.weight"),
        }
    }

    fn vision_layer_prefix(self) -> String {
        format!("{}encoder.layers.", self.vision_prefix())
    }

    pub fn vision_layer(self, index: usize) -> VisionLayerNames {
        let p = format!("{}{index}", self.vision_layer_prefix());
        VisionLayerNames {
            norm1: layer_norm(&format!("{p}.layer_norm1")),
            qkv: stacked(
                &format!("{p}.self_attn"),
                &["q_proj", "k_proj", "v_proj"],
                true,
            ),
            attn_out: linear(&format!("{p}.self_attn.out_proj"), true),
            norm2: layer_norm(&format!("{p}.layer_norm2")),
            fc1: linear(&format!("{p}.mlp.fc1"), true),
            fc2: linear(&format!("{p}.mlp.fc2"), true),
        }
    }

    /// Number of stored vision encoder layers (26 in the released models), which must be
    /// numbered 0..n without gaps.
    pub fn count_vision_layers(self, checkpoint: &dyn TensorShapes) -> Result<usize> {
        count_layers(checkpoint, &self.vision_layer_prefix(), "vision encoder")
    }

    /// Number of stored decoder layers, numbered 0..n without gaps.
    pub fn count_decoder_layers(self, checkpoint: &dyn TensorShapes) -> Result<usize> {
        count_layers(checkpoint, self.decoder_layer_prefix(), "decoder")
    }

    fn decoder_layer_prefix(self) -> &'static str {
        match self {
            Self::PhiMsft => "transformer.h.",
            Self::PhiHf | Self::Qwen2 | Self::Phi3 => "model.layers.",
        }
    }

    pub fn projector_prefix(self) -> String {
        format!("{}.mm_projector.", self.root())
    }

    /// The part a stored tensor belongs to.
    pub fn part_of(self, name: &str) -> Part {
        if name.starts_with(&self.vision_prefix()) {
            Part::Vision
        } else if name.starts_with(&self.projector_prefix()) {
            Part::Projector
        } else {
            Part::Llm
        }
    }

    /// Every stored matrix (linear weights and the token-embedding table) of a model with
    /// these layer counts: what `imp quantize` converts to the plan's formats.
    pub fn matrix_names(self, decoder_layers: usize, vision_layers: usize) -> Vec<String> {
        let decoder = self.decoder();
        let projector = self.projector();
        let mut linears = vec![decoder.lm_head, projector.fc1, projector.fc2];
        for i in 0..decoder_layers {
            let n = self.decoder_layer(i);
            linears.extend([n.qkv, n.attn_out, n.mlp_in, n.mlp_out]);
        }
        for i in 0..vision_layers {
            let n = self.vision_layer(i);
            linears.extend([n.qkv, n.attn_out, n.fc1, n.fc2]);
        }
        let mut names = vec![decoder.embed_tokens];
        names.extend(
            linears
                .iter()
                .flat_map(|l| l.weight.names())
                .map(str::to_owned),
        );
        names
    }

    pub fn projector(self) -> ProjectorNames {
        let p = self.projector_prefix();
        ProjectorNames {
            fc1: linear(&format!("{p}0"), true),
            fc2: linear(&format!("{p}2"), true),
        }
    }
}

/// Layers stored under `prefix` (`<prefix><index>.`), which must be numbered 0..n.
fn count_layers(checkpoint: &dyn TensorShapes, prefix: &str, what: &str) -> Result<usize> {
    let mut indices: Vec<usize> = checkpoint
        .tensor_names()
        .filter_map(|name| name.strip_prefix(prefix))
        .filter_map(|rest| rest.split('.').next()?.parse().ok())
        .collect();
    indices.sort_unstable();
    indices.dedup();
    if let Some((expected, found)) = indices.iter().enumerate().find(|(i, n)| *i != **n) {
        return Err(Error::tensor(
            format!("{prefix}{expected}.*"),
            format!("missing: {what} layers are numbered with a gap (found layer {found})"),
        ));
    }
    if indices.is_empty() {
        return Err(Error::tensor(
            format!("{prefix}0.*"),
            format!("missing: the checkpoint stores no {what} layers"),
        ));
    }
    Ok(indices.len())
}
