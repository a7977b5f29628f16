//! Random-weight checkpoints with the real shapes, names and config of each released Imp model,
//! for full-size checks and benchmarks without downloading anything.
//!
//! Tensor names come from [`NamingStyle`], so a synthetic folder exercises exactly the loader
//! path of the real release. Weights are streamed to disk shard by shard; memory stays small.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use half::{bf16, f16};
use serde_json::{json, Value};

use crate::checkpoint::names::{LinearNames, NormNames};
use crate::checkpoint::{NamingStyle, Source};
use crate::llm::Family;
use crate::{Error, Result};

/// One released model's architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    ImpV1_3b,
    ImpV15_3b,
    ImpV15_3b196,
    ImpV15_2b,
    ImpV15_4b,
}

impl Preset {
    pub const ALL: [Preset; 5] = [
        Self::ImpV1_3b,
        Self::ImpV15_3b,
        Self::ImpV15_3b196,
        Self::ImpV15_2b,
        Self::ImpV15_4b,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::ImpV1_3b => "imp-v1-3b",
            Self::ImpV15_3b => "imp-v1.5-3b",
            Self::ImpV15_3b196 => "imp-v1.5-3b-196",
            Self::ImpV15_2b => "imp-v1.5-2b",
            Self::ImpV15_4b => "imp-v1.5-4b",
        }
    }

    pub fn from_name(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| {
                let known: Vec<_> = Self::ALL.iter().map(|p| p.name()).collect();
                Error::InvalidArgument(format!(
                    "unknown preset `{name}`; known: {}",
                    known.join(", ")
                ))
            })
    }

    pub fn family(self) -> Family {
        match self {
            Self::ImpV15_2b => Family::Qwen2,
            Self::ImpV15_4b => Family::Phi3,
            _ => Family::Phi2,
        }
    }

    fn style(self) -> NamingStyle {
        match self {
            Self::ImpV15_3b196 => NamingStyle::PhiMsft,
            Self::ImpV15_2b => NamingStyle::Qwen2,
            Self::ImpV15_4b => NamingStyle::Phi3,
            _ => NamingStyle::PhiHf,
        }
    }

    fn shape(self) -> Shape {
        let (hidden, intermediate, layers, heads, vocab) = match self.family() {
            Family::Phi2 => (2560, 10240, 32, 32, 51200),
            Family::Qwen2 => (2048, 5504, 24, 16, 151936),
            Family::Phi3 => (3072, 8192, 32, 32, 32064),
        };
        Shape {
            hidden,
            intermediate,
            layers,
            heads,
            vocab,
            image_size: if self == Self::ImpV15_3b196 { 196 } else { 384 },
        }
    }
}

struct Shape {
    hidden: usize,
    intermediate: usize,
    layers: usize,
    heads: usize,
    vocab: usize,
    image_size: usize,
}

const VISION_HIDDEN: usize = 1152;
const VISION_INTERMEDIATE: usize = 4304;
const VISION_LAYERS: usize = 26;
const PATCH: usize = 14;
const SHARD_BYTES: usize = 2 << 30;

#[derive(Clone, Copy)]
enum Fill {
    Random,
    Ones,
    Zeros,
}

struct Spec {
    name: String,
    shape: Vec<usize>,
    fill: Fill,
}

/// Writes `preset`'s checkpoint into `out` (created if needed), with the tokenizer files copied
/// from `tokenizer_dir`. Returns the bytes of weights written.
pub fn write_checkpoint(
    preset: Preset,
    out: &Path,
    tokenizer_dir: &Path,
    seed: u64,
) -> Result<u64> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let specs = tensor_specs(preset);
    let storage = if preset.family() == Family::Phi3 {
        "BF16"
    } else {
        "F16"
    };

    let mut shards: Vec<Vec<&Spec>> = vec![Vec::new()];
    let mut bytes = 0;
    for spec in &specs {
        let size = 2 * spec.shape.iter().product::<usize>();
        if bytes + size > SHARD_BYTES && !shards.last().unwrap().is_empty() {
            shards.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        shards.last_mut().unwrap().push(spec);
    }
    let count = shards.len();
    let mut rng = XorShift(seed.max(1));
    let mut weight_map = serde_json::Map::new();
    let mut total = 0u64;
    for (i, shard) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-{count:05}.safetensors", i + 1);
        total += write_shard(&out.join(&file), shard, storage, &mut rng)?;
        for spec in shard {
            weight_map.insert(spec.name.clone(), Value::String(file.clone()));
        }
    }
    let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    write_json(&out.join("model.safetensors.index.json"), &index)?;
    write_json(&out.join("config.json"), &config_json(preset))?;
    if preset == Preset::ImpV15_3b196 {
        let sub = out.join("siglip-so400m-patch14-196");
        std::fs::create_dir_all(&sub).map_err(|e| Error::io(&sub, e))?;
        write_json(&sub.join("config.json"), &vision_json(196))?;
    }
    copy_tokenizer(tokenizer_dir, out)?;
    Ok(total)
}

fn tensor_specs(preset: Preset) -> Vec<Spec> {
    let s = preset.shape();
    let style = preset.style();
    let mut specs = Vec::new();
    let mut push =
        |name: String, shape: Vec<usize>, fill: Fill| specs.push(Spec { name, shape, fill });
    let linear = |push: &mut dyn FnMut(String, Vec<usize>, Fill),
                  n: &LinearNames,
                  out: usize,
                  inp: usize| {
        for (source, shape, fill) in [(Some(&n.weight), vec![out, inp], Fill::Random)]
            .into_iter()
            .chain([(n.bias.as_ref(), vec![out], Fill::Zeros)])
        {
            match source {
                Some(Source::Tensor(name)) => push(name.clone(), shape, fill),
                Some(Source::Rows(names)) => {
                    let mut part = shape.clone();
                    part[0] /= names.len();
                    for name in names {
                        push(name.clone(), part.clone(), fill);
                    }
                }
                None => {}
            }
        }
    };
    let norm = |push: &mut dyn FnMut(String, Vec<usize>, Fill), n: &NormNames, dim: usize| {
        push(n.weight.clone(), vec![dim], Fill::Ones);
        if let Some(bias) = &n.bias {
            push(bias.clone(), vec![dim], Fill::Zeros);
        }
    };

    let v = style.vision_embeddings();
    let grid = s.image_size / PATCH;
    push(
        v.patch_weight,
        vec![VISION_HIDDEN, 3, PATCH, PATCH],
        Fill::Random,
    );
    push(v.patch_bias, vec![VISION_HIDDEN], Fill::Zeros);
    push(v.position, vec![grid * grid, VISION_HIDDEN], Fill::Random);
    for i in 0..VISION_LAYERS {
        let n = style.vision_layer(i);
        norm(&mut push, &n.norm1, VISION_HIDDEN);
        linear(&mut push, &n.qkv, 3 * VISION_HIDDEN, VISION_HIDDEN);
        linear(&mut push, &n.attn_out, VISION_HIDDEN, VISION_HIDDEN);
        norm(&mut push, &n.norm2, VISION_HIDDEN);
        linear(&mut push, &n.fc1, VISION_INTERMEDIATE, VISION_HIDDEN);
        linear(&mut push, &n.fc2, VISION_HIDDEN, VISION_INTERMEDIATE);
    }
    let p = style.projector();
    linear(&mut push, &p.fc1, s.hidden, VISION_HIDDEN);
    linear(&mut push, &p.fc2, s.hidden, s.hidden);

    let d = style.decoder();
    push(d.embed_tokens, vec![s.vocab, s.hidden], Fill::Random);
    let mlp_in = match preset.family() {
        Family::Phi2 => s.intermediate,
        _ => 2 * s.intermediate,
    };
    for i in 0..s.layers {
        let n = style.decoder_layer(i);
        norm(&mut push, &n.attn_norm, s.hidden);
        if let Some(m) = &n.mlp_norm {
            norm(&mut push, m, s.hidden);
        }
        linear(&mut push, &n.qkv, 3 * s.hidden, s.hidden);
        linear(&mut push, &n.attn_out, s.hidden, s.hidden);
        linear(&mut push, &n.mlp_in, mlp_in, s.hidden);
        linear(&mut push, &n.mlp_out, s.hidden, s.intermediate);
    }
    norm(&mut push, &d.final_norm, s.hidden);
    linear(&mut push, &d.lm_head, s.vocab, s.hidden);
    specs
}

/// Streams one safetensors file: header first, then each tensor's bytes as they are drawn.
fn write_shard(path: &Path, specs: &[&Spec], storage: &str, rng: &mut XorShift) -> Result<u64> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0usize;
    for spec in specs {
        let size = 2 * spec.shape.iter().product::<usize>();
        header.insert(
            spec.name.clone(),
            json!({"dtype": storage, "shape": spec.shape, "data_offsets": [offset, offset + size]}),
        );
        offset += size;
    }
    let mut header = serde_json::to_vec(&Value::Object(header)).expect("JSON of plain values");
    header.resize(header.len().div_ceil(8) * 8, b' ');
    let io = |e| Error::io(path, e);
    let mut w = BufWriter::with_capacity(1 << 22, File::create(path).map_err(io)?);
    w.write_all(&(header.len() as u64).to_le_bytes())
        .map_err(io)?;
    w.write_all(&header).map_err(io)?;
    let mut buf = Vec::new();
    for spec in specs {
        let n: usize = spec.shape.iter().product();
        // Keeps activations tame through 32 layers of random weights.
        let scale = 0.02f32;
        buf.clear();
        buf.reserve(2 * n);
        for _ in 0..n {
            let x = match spec.fill {
                Fill::Random => rng.uniform() * scale,
                Fill::Ones => 1.0,
                Fill::Zeros => 0.0,
            };
            let bits = if storage == "BF16" {
                bf16::from_f32(x).to_bits()
            } else {
                f16::from_f32(x).to_bits()
            };
            buf.extend_from_slice(&bits.to_le_bytes());
        }
        w.write_all(&buf).map_err(io)?;
    }
    w.flush().map_err(io)?;
    Ok(offset as u64)
}

/// Uniform in (-√3, √3): unit variance.
struct XorShift(u64);

impl XorShift {
    fn uniform(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let unit = (self.0 >> 40) as f32 / (1u64 << 24) as f32;
        (2.0 * unit - 1.0) * 3f32.sqrt()
    }
}

fn vision_json(image_size: usize) -> Value {
    json!({
        "model_type": "siglip_vision_model",
        "hidden_size": VISION_HIDDEN,
        "intermediate_size": VISION_INTERMEDIATE,
        "num_attention_heads": 16,
        "num_hidden_layers": 27,
        "image_size": image_size,
        "patch_size": PATCH,
        "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": 1e-6,
    })
}

fn config_json(preset: Preset) -> Value {
    let s = preset.shape();
    let mut config = match preset.style() {
        NamingStyle::PhiMsft => json!({
            "model_type": "imp", "architectures": ["ImpForCausalLM"],
            "n_embd": s.hidden, "n_head": s.heads, "n_head_kv": null, "n_inner": null,
            "n_layer": s.layers, "n_positions": 3072, "rotary_dim": 32,
            "layer_norm_epsilon": 1e-5, "vocab_size": s.vocab,
            "eos_token_id": 50295, "pad_token_id": 50256, "image_token_index": 50296,
            "tokenizer_model_max_length": 3072, "torch_dtype": "float16",
        }),
        NamingStyle::PhiHf => json!({
            "model_type": "imp", "architectures": ["ImpForCausalLM"],
            "hidden_size": s.hidden, "intermediate_size": s.intermediate,
            "num_hidden_layers": s.layers, "num_attention_heads": s.heads,
            "num_key_value_heads": s.heads, "partial_rotary_factor": 0.4, "rope_theta": 10000.0,
            "layer_norm_eps": 1e-5, "vocab_size": s.vocab, "max_position_embeddings": 3072,
            "eos_token_id": 50295, "pad_token_id": 50256, "image_token_index": 50296,
            "tokenizer_model_max_length": 3072, "torch_dtype": "float16",
        }),
        NamingStyle::Qwen2 => json!({
            "model_type": "imp_qwen2", "architectures": ["ImpQwen2ForCausalLM"],
            "hidden_size": s.hidden, "intermediate_size": s.intermediate,
            "num_hidden_layers": s.layers, "num_attention_heads": s.heads,
            "num_key_value_heads": s.heads, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
            "vocab_size": s.vocab, "max_position_embeddings": 32768, "bos_token_id": 151643,
            "eos_token_id": 151645, "image_token_index": 151646,
            "tokenizer_model_max_length": 2560, "torch_dtype": "float16",
        }),
        NamingStyle::Phi3 => json!({
            "model_type": "imp_phi3", "architectures": ["ImpPhi3ForCausalLM"],
            "hidden_size": s.hidden, "intermediate_size": s.intermediate,
            "num_hidden_layers": s.layers, "num_attention_heads": s.heads,
            "num_key_value_heads": s.heads, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "rope_scaling": null, "vocab_size": s.vocab, "max_position_embeddings": 4096,
            "bos_token_id": 1, "eos_token_id": 32007, "pad_token_id": 32000,
            "tokenizer_model_max_length": 2560, "torch_dtype": "bfloat16",
        }),
    };
    let fields = config.as_object_mut().expect("object literal");
    fields.insert("mm_projector_type".into(), json!("mlp2x_gelu"));
    fields.insert("mm_hidden_size".into(), json!(VISION_HIDDEN));
    fields.insert("mm_vision_select_layer".into(), json!(-2));
    fields.insert(
        "image_aspect_ratio".into(),
        json!(if preset == Preset::ImpV15_4b {
            "pad"
        } else {
            "square"
        }),
    );
    if preset != Preset::ImpV15_3b196 {
        fields.insert("vision_tower_config".into(), vision_json(s.image_size));
    }
    config
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("JSON of plain values");
    std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
}

const TOKENIZER_FILES: [&str; 8] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "generation_config.json",
];

fn copy_tokenizer(from: &Path, to: &Path) -> Result<()> {
    let mut copied = 0;
    for file in TOKENIZER_FILES {
        let src = from.join(file);
        if src.is_file() {
            let dst = to.join(file);
            std::fs::copy(&src, &dst).map_err(|e| Error::io(&dst, e))?;
            copied += 1;
        }
    }
    if copied == 0 {
        return Err(Error::Tokenizer(format!(
            "no tokenizer files in {} to copy",
            from.display()
        )));
    }
    Ok(())
}
