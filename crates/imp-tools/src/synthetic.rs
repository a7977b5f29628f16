//! Random-weight checkpoints with the real shapes, names and config of each released Imp model,
//! for full-size checks and benchmarks without downloading anything.
//!
//! Tensor names come from [`NamingStyle`], so a synthetic folder exercises exactly the loader
//! path of the real release. Weights are streamed to disk shard by shard; memory stays small.
//! [`SyntheticCheckpoint`] is the same model drawn in memory as it loads, for `imp bench`.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use candle_core::quantized::{ggml_file, GgmlDType};
use candle_core::{DType, Device, Tensor};
use half::{bf16, f16};
use rayon::prelude::*;
use serde_json::{json, Value};

use imp::checkpoint::TensorSource;
use imp::config::{ConfigFiles, Family};
use imp::names::{LinearNames, NamingStyle, NormNames, Source, TensorShapes};
use imp::quant::{self, Matrix};
use imp::tokenizer::ImpTokenizer;

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

/// Writes `preset`'s checkpoint into `out` (created if needed; one holding files only with
/// `overwrite`), with the tokenizer files copied from `tokenizer_dir`. Returns the bytes of
/// weights written.
pub fn write_checkpoint(
    preset: Preset,
    out: &Path,
    tokenizer_dir: &Path,
    seed: u64,
    overwrite: imp::files::Overwrite,
) -> Result<u64> {
    imp::files::check_output_dir(out, &[tokenizer_dir], overwrite)?;
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
        buf.clear();
        buf.reserve(2 * n);
        for _ in 0..n {
            let x = match spec.fill {
                Fill::Random => rng.uniform() * RANDOM_SCALE,
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

/// A preset's checkpoint made in memory: each tensor is drawn when the loader asks for it, so
/// a full-size model can be benchmarked without writing or reading files.
pub struct SyntheticCheckpoint {
    preset: Preset,
    /// Stands in for a path in messages.
    label: PathBuf,
    tokenizer_dir: PathBuf,
    seed: u64,
    specs: HashMap<String, (Vec<usize>, Fill)>,
}

/// Rows drawn (and quantized) per block-format matrix; the rest repeat them. The kernels see
/// the real shapes and byte counts, and quantizing a 3B model at load would take minutes.
const BLOCK_TILE_ROWS: usize = 64;

impl SyntheticCheckpoint {
    /// `tokenizer_dir` is a folder with the family's tokenizer files (such as a bundled tiny
    /// model of that family).
    pub fn new(preset: Preset, tokenizer_dir: &Path, seed: u64) -> Self {
        let specs = tensor_specs(preset)
            .into_iter()
            .map(|spec| (spec.name, (spec.shape, spec.fill)))
            .collect();
        Self {
            preset,
            label: PathBuf::from(format!("<synthetic {}>", preset.name())),
            tokenizer_dir: tokenizer_dir.to_path_buf(),
            seed: seed.max(1),
            specs,
        }
    }

    fn spec(&self, name: &str) -> imp::Result<&(Vec<usize>, Fill)> {
        self.specs.get(name).ok_or_else(|| {
            imp::Error::tensor(
                name,
                format!("is not part of the {} preset", self.preset.name()),
            )
        })
    }

    /// Each tensor's values depend only on its name and the seed, not on the load order.
    fn tensor_seed(&self, name: &str) -> u64 {
        name.bytes()
            .fold(self.seed ^ 0x9e37_79b9_7f4a_7c15, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            })
    }
}

impl TensorShapes for SyntheticCheckpoint {
    fn location(&self) -> &Path {
        &self.label
    }

    fn contains(&self, name: &str) -> bool {
        self.specs.contains_key(name)
    }

    fn tensor_names(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        Box::new(self.specs.keys().map(String::as_str))
    }

    fn shape(&self, name: &str) -> imp::Result<Vec<usize>> {
        Ok(self.spec(name)?.0.clone())
    }
}

impl TensorSource for SyntheticCheckpoint {
    fn config_files(&self) -> imp::Result<ConfigFiles> {
        let text = |value: &Value| serde_json::to_string(value).expect("JSON of plain values");
        Ok(ConfigFiles {
            root: self.label.clone(),
            config: text(&config_json(self.preset)),
            generation: None,
            vision: (self.preset == Preset::ImpV15_3b196).then(|| {
                (
                    "siglip-so400m-patch14-196/config.json".to_owned(),
                    text(&vision_json(196)),
                )
            }),
        })
    }

    fn tokenizer(&self) -> imp::Result<ImpTokenizer> {
        ImpTokenizer::from_dir(&self.tokenizer_dir)
    }

    /// Everything is drawn in the release's storage dtype.
    fn storage_dtypes(&self) -> BTreeMap<String, usize> {
        let elements = self
            .specs
            .values()
            .map(|(shape, _)| shape.iter().product::<usize>())
            .sum();
        let dtype = if self.preset.family() == Family::Phi3 {
            "bf16"
        } else {
            "f16"
        };
        BTreeMap::from([(dtype.to_owned(), elements)])
    }

    /// A dense tensor with the preset's values for `name`.
    fn load_dense(&self, name: &str, dtype: DType, device: &Device) -> imp::Result<Tensor> {
        let (shape, fill) = self.spec(name)?;
        let len = shape.iter().product();
        let values = match fill {
            Fill::Random => draw(self.tensor_seed(name), len),
            Fill::Ones => vec![1.0; len],
            Fill::Zeros => vec![0.0; len],
        };
        Ok(Tensor::from_vec(values, shape.as_slice(), device)?.to_dtype(dtype)?)
    }

    /// A weight matrix `[out, width]` in `format`: block formats quantize a tile of rows once
    /// and repeat its bytes.
    fn matrix(
        &self,
        source: &Source,
        out: usize,
        width: usize,
        format: Option<GgmlDType>,
        device: &Device,
    ) -> imp::Result<Option<Matrix>> {
        // Without a format the loader reads the dense tensor.
        let Some(format) = format else {
            return Ok(None);
        };
        let seed = self.tensor_seed(source.names()[0]);
        if quant::float_dtype(format).is_some() {
            let full = Tensor::from_vec(draw(seed, out * width), (out, width), device)?;
            return Matrix::convert(&full, format).map(Some);
        }
        let tile_rows = out.min(BLOCK_TILE_ROWS);
        let tile = Tensor::from_vec(draw(seed, tile_rows * width), (tile_rows, width), device)?;
        let Matrix::Blocks(blocks) = Matrix::convert(&tile, format)? else {
            return Err(imp::Error::InvalidArgument(format!(
                "{} is neither a float nor a block format",
                quant::format_name(format)
            )));
        };
        let padded = blocks.shape().dims2()?.1;
        let bytes = blocks.data()?;
        let row_bytes = bytes.len() / tile_rows;
        let mut all = Vec::with_capacity(out * row_bytes);
        while all.len() < out * row_bytes {
            let take = (out * row_bytes - all.len()).min(bytes.len());
            all.extend_from_slice(&bytes[..take]);
        }
        Ok(Some(Matrix::Blocks(ggml_file::qtensor_from_ggml(
            format,
            &all,
            vec![out, padded],
            device,
        )?)))
    }
}

/// `len` values of the checkpoint's random fill, drawn in parallel chunks.
fn draw(seed: u64, len: usize) -> Vec<f32> {
    const CHUNK: usize = 1 << 16;
    let mut values = vec![0f32; len];
    values
        .par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(i, chunk)| {
            let mut rng = XorShift((seed ^ (i as u64).wrapping_mul(0x2545_f491_4f6c_dd1d)).max(1));
            for x in chunk {
                *x = rng.uniform() * RANDOM_SCALE;
            }
        });
    values
}

/// Keeps activations tame through 32 layers of random weights.
const RANDOM_SCALE: f32 = 0.02;

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
        return Err(imp::Error::Tokenizer(format!(
            "no tokenizer files in {} to copy",
            from.display()
        ))
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use imp::config::ImpConfig;

    fn tokenizer(preset: Preset) -> PathBuf {
        let name = match preset.family() {
            Family::Phi2 => "imp-v1.5-3b-phi2",
            Family::Qwen2 => "imp-v1.5-2b-qwen1.5",
            Family::Phi3 => "imp-v1.5-4b-phi3",
        };
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/models")
            .join(name)
    }

    #[test]
    fn every_preset_configures_like_a_release() {
        for preset in Preset::ALL {
            let synthetic = SyntheticCheckpoint::new(preset, &tokenizer(preset), 1);
            let files = synthetic.config_files().unwrap();
            let config = ImpConfig::load(&files, &synthetic).unwrap();
            let s = preset.shape();
            assert_eq!(config.decoder.hidden_size, s.hidden, "{}", preset.name());
            assert_eq!(config.decoder.num_layers, s.layers);
            assert_eq!(config.vision.image_size, s.image_size);
            assert_eq!(config.vision.num_layers, VISION_LAYERS);
        }
    }

    #[test]
    fn block_matrices_repeat_a_drawn_tile() {
        let preset = Preset::ImpV15_3b;
        let synthetic = SyntheticCheckpoint::new(preset, &tokenizer(preset), 7);
        let source = preset.style().projector().fc1.weight;
        let (out, width) = (preset.shape().hidden, VISION_HIDDEN);
        let Matrix::Blocks(blocks) = synthetic
            .matrix(&source, out, width, Some(GgmlDType::Q8_0), &Device::Cpu)
            .unwrap()
            .unwrap()
        else {
            panic!("q8_0 is a block format");
        };
        let values = blocks.dequantize(&Device::Cpu).unwrap();
        assert_eq!(values.dims(), [out, 1280]);
        let row = |i: usize| values.get(i).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(row(3), row(3 + BLOCK_TILE_ROWS));
        assert_ne!(row(3), row(4));
        assert!(row(3)[width..].iter().all(|&x| x == 0.0), "zero padding");
        let dense = synthetic
            .load_dense(source.names()[0], DType::F32, &Device::Cpu)
            .unwrap();
        assert_eq!(dense.dims(), [out, width]);
    }
}
