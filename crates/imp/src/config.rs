//! The typed configs of every model part, and how an Imp folder's `config.json` (in either
//! Phi-2 key style), the optional SigLIP config and the stored tensor shapes become them.
//!
//! A leaf: it reads JSON text and asks a [`TensorShapes`] for sizes, and knows nothing of
//! weights, layers or sessions, so every other module can depend on it and it can be tested
//! without a model.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::names::{NamingStyle, TensorShapes};
use crate::{Error, Result};

/// Which base language model an Imp checkpoint wraps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Phi2,
    Qwen2,
    Phi3,
}

/// How a decoder layer combines attention and MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Block {
    /// `x + attn(norm(x)) + mlp(norm(x))`, one norm shared (Phi-2).
    Parallel,
    /// `h = x + attn(norm1(x)); h + mlp(norm2(h))` (Qwen2, Phi-3).
    Sequential,
}

/// The normalisation every decoder norm uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormKind {
    LayerNorm,
    RmsNorm,
}

/// The decoder MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mlp {
    /// `fc2(gelu_tanh(fc1(x)))`.
    Gelu,
    /// `down(silu(gate(x)) * up(x))`, gate and up stored as one matrix of stacked rows.
    SwiGlu,
}

impl Family {
    pub fn label(self) -> &'static str {
        match self {
            Self::Phi2 => "Phi-2",
            Self::Qwen2 => "Qwen1.5 (Qwen2 architecture)",
            Self::Phi3 => "Phi-3-mini",
        }
    }

    pub fn block(self) -> Block {
        match self {
            Self::Phi2 => Block::Parallel,
            Self::Qwen2 | Self::Phi3 => Block::Sequential,
        }
    }

    pub fn norm(self) -> NormKind {
        match self {
            Self::Phi2 => NormKind::LayerNorm,
            Self::Qwen2 | Self::Phi3 => NormKind::RmsNorm,
        }
    }

    pub fn mlp(self) -> Mlp {
        match self {
            Self::Phi2 => Mlp::Gelu,
            Self::Qwen2 | Self::Phi3 => Mlp::SwiGlu,
        }
    }
}

/// The language model: one of three families, sized by `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderConfig {
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Leading head dims that rotate (Phi-2: 32 of 80; the others: all).
    pub rotary_dim: usize,
    pub rope_theta: f64,
    pub norm_eps: f64,
    /// Dropout the model was trained with on each block's attention and MLP outputs (Phi-2's
    /// `resid_pdrop`); only training applies it, through
    /// [`LoadOptions::residual_dropout`](crate::LoadOptions::residual_dropout).
    pub residual_dropout: f64,
}

impl DecoderConfig {
    /// Rows of the fused query/key/value projection.
    pub fn qkv_rows(&self) -> usize {
        (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
    }

    /// Rows of the MLP's input projection (gate and up stacked for SwiGLU).
    pub fn mlp_in_rows(&self) -> usize {
        match self.family.mlp() {
            Mlp::Gelu => self.intermediate_size,
            Mlp::SwiGlu => 2 * self.intermediate_size,
        }
    }
}

/// The SigLIP trunk, sized by the stored tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_heads: usize,
    /// Layers stored in the checkpoint, all of which run.
    pub num_layers: usize,
    pub patch_size: usize,
    /// Pixels a side the image is resized to; may differ from the trained size.
    pub image_size: usize,
    /// Patches a side of the stored position table (the trained grid).
    pub position_grid: usize,
    pub layer_norm_eps: f64,
}

impl VisionConfig {
    /// google/siglip-so400m-patch14-384 with Imp's last layer removed.
    pub fn so400m() -> Self {
        Self {
            hidden_size: 1152,
            intermediate_size: 4304,
            num_heads: 16,
            num_layers: 26,
            patch_size: 14,
            image_size: 384,
            position_grid: 27,
            layer_norm_eps: 1e-6,
        }
    }

    /// Patches per side; pixels beyond `grid * patch` (6 of so400m's 384) are never seen.
    pub fn grid_size(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Visual tokens per image: one per patch.
    pub fn num_patches(&self) -> usize {
        self.grid_size() * self.grid_size()
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }
}

/// The `mlp2x_gelu` projector between the two.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectorConfig {
    /// SigLIP hidden size (`mm_hidden_size`).
    pub input_size: usize,
    /// The language model's hidden size.
    pub output_size: usize,
}

/// How a non-square image becomes square, from the model config's `image_aspect_ratio`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AspectMode {
    /// `"square"`: resize straight to S×S, distorting the aspect ratio.
    Squash,
    /// `"pad"`: centre on a grey square first (LLaVA `expand2square`).
    Pad,
}

impl AspectMode {
    pub fn from_config(value: &str) -> Result<Self> {
        match value {
            "square" => Ok(Self::Squash),
            "pad" => Ok(Self::Pad),
            other => Err(Error::InvalidArgument(format!(
                "image_aspect_ratio `{other}` is not supported (expected \"square\" or \"pad\")"
            ))),
        }
    }
}

/// Everything the engine needs to know about one Imp checkpoint.
#[derive(Debug, Clone)]
pub struct ImpConfig {
    pub model_type: String,
    pub style: NamingStyle,
    pub decoder: DecoderConfig,
    pub vision: VisionConfig,
    /// Where the vision settings came from (embedded config, sub-folder, defaults).
    pub vision_source: String,
    pub projector: ProjectorConfig,
    pub aspect: AspectMode,
    /// Longest spliced sequence (`tokenizer_model_max_length`).
    pub max_context: usize,
    /// End-of-sequence ids from `config.json` and `generation_config.json`.
    pub eos_token_ids: Vec<u32>,
}

/// The JSON files a configuration is read from: a model folder's, or the copies a GGUF file
/// written by `imp quantize` embeds.
#[derive(Debug, Clone)]
pub struct ConfigFiles {
    /// The folder or GGUF file the names are relative to (for messages).
    pub root: PathBuf,
    /// `config.json`.
    pub config: String,
    /// `generation_config.json`, if present.
    pub generation: Option<String>,
    /// The path relative to `root` and the text of a SigLIP sub-folder's `config.json` (as
    /// Imp-v1.5-3B-196 ships), if present.
    pub vision: Option<(String, String)>,
}

impl ConfigFiles {
    pub const CONFIG: &'static str = "config.json";
    pub const GENERATION: &'static str = "generation_config.json";

    pub fn read(dir: &Path) -> Result<Self> {
        let read = |path: &Path| std::fs::read_to_string(path).map_err(|e| Error::io(path, e));
        let generation = dir.join(Self::GENERATION);
        let vision = match siglip_subfolder(dir)? {
            Some(path) => {
                let name = path
                    .strip_prefix(dir)
                    .unwrap_or(&path)
                    .display()
                    .to_string();
                Some((name, read(&path)?))
            }
            None => None,
        };
        Ok(Self {
            root: dir.to_path_buf(),
            config: read(&dir.join(Self::CONFIG))?,
            generation: generation
                .is_file()
                .then(|| read(&generation))
                .transpose()?,
            vision,
        })
    }
}

impl ImpConfig {
    pub fn load(files: &ConfigFiles, checkpoint: &dyn TensorShapes) -> Result<Self> {
        let path = files.root.join(ConfigFiles::CONFIG);
        let json = Json::parse(&path, &files.config)?;
        let model_type = json.str("model_type")?.to_owned();
        let family = match model_type.as_str() {
            "imp" => Family::Phi2,
            "imp_qwen2" => Family::Qwen2,
            "imp_phi3" => Family::Phi3,
            other => {
                return Err(Error::config(
                    &path,
                    format!(
                        "unknown model_type `{other}`; supported: `imp` (Phi-2), `imp_qwen2`, \
                         `imp_phi3`"
                    ),
                ))
            }
        };
        if let Some(kind) = json.opt_str("mm_projector_type")? {
            if kind != "mlp2x_gelu" {
                return Err(Error::config(
                    &path,
                    format!("mm_projector_type `{kind}` is not supported (only `mlp2x_gelu`)"),
                ));
            }
        }
        let style = NamingStyle::detect(checkpoint, &model_type)?;
        let decoder = decoder_config(&json, family)?;
        let embed_shape = checkpoint.shape(&style.decoder().embed_tokens)?;
        if embed_shape.len() != 2 || embed_shape[1] != decoder.hidden_size {
            return Err(Error::tensor(
                style.decoder().embed_tokens,
                format!(
                    "has shape {embed_shape:?}, expected [vocab, {}]",
                    decoder.hidden_size
                ),
            ));
        }
        let stored_vocab = embed_shape[0];
        if decoder.vocab_size != stored_vocab {
            return Err(json.error(format!(
                "vocab_size {} does not match the {stored_vocab} rows of the stored `{}`",
                decoder.vocab_size,
                style.decoder().embed_tokens
            )));
        }
        let stored_layers = style.count_decoder_layers(checkpoint)?;
        if decoder.num_layers != stored_layers {
            return Err(json.error(format!(
                "{} {} does not match the {stored_layers} decoder layers stored",
                json.key_of(LAYER_KEYS),
                decoder.num_layers
            )));
        }

        let (vision, vision_source) = vision_config(files, &json, checkpoint, style)?;
        if let Some(mm_hidden) = json.opt_usize(&["mm_hidden_size"])? {
            if mm_hidden != vision.hidden_size {
                return Err(Error::config(
                    &path,
                    format!(
                        "mm_hidden_size {mm_hidden} does not match the stored vision width {}",
                        vision.hidden_size
                    ),
                ));
            }
        }
        let aspect =
            AspectMode::from_config(json.opt_str("image_aspect_ratio")?.unwrap_or("square"))
                .map_err(|e| Error::config(&path, e.to_string()))?;
        // Imp truncates to the tokenizer's limit when the config sets one.
        let positions = &["max_position_embeddings", "n_positions"];
        let max_context = match json.has("tokenizer_model_max_length") {
            true => {
                if json.has(positions[0]) || json.has(positions[1]) {
                    json.positive(positions)?;
                }
                json.positive(&["tokenizer_model_max_length"])?
            }
            false => json.positive(positions)?,
        };
        let mut eos_token_ids = json.ids("eos_token_id")?;
        if let Some(text) = &files.generation {
            let path = files.root.join(ConfigFiles::GENERATION);
            eos_token_ids.extend(Json::parse(&path, text)?.ids("eos_token_id")?);
        }
        eos_token_ids.dedup();
        Ok(Self {
            model_type,
            style,
            projector: ProjectorConfig {
                input_size: vision.hidden_size,
                output_size: decoder.hidden_size,
            },
            decoder,
            vision,
            vision_source,
            aspect,
            max_context,
            eos_token_ids,
        })
    }
}

fn decoder_config(json: &Json, family: Family) -> Result<DecoderConfig> {
    // Phi-2 checkpoints come with either Microsoft's original keys or transformers' keys.
    let msft = json.has("n_embd");
    let hidden_size = json.usize(&["hidden_size", "n_embd"])?;
    let num_heads = json.usize(&["num_attention_heads", "n_head"])?;
    let num_kv_heads = json
        .opt_usize(&["num_key_value_heads", "n_head_kv"])?
        .unwrap_or(num_heads);
    let num_layers = json.usize(LAYER_KEYS)?;
    let intermediate_size = if msft {
        json.opt_usize(&["n_inner"])?.unwrap_or(4 * hidden_size)
    } else {
        json.usize(&["intermediate_size"])?
    };
    if num_heads == 0 || hidden_size % num_heads != 0 {
        return Err(json.error(format!(
            "hidden size {hidden_size} is not divisible by {num_heads} attention heads"
        )));
    }
    if num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
        return Err(json.error(format!(
            "{num_heads} attention heads cannot share {num_kv_heads} key/value heads"
        )));
    }
    let head_dim = hidden_size / num_heads;
    let rotary_dim = match family {
        Family::Phi2 if msft => json.usize(&["rotary_dim"])?,
        Family::Phi2 => {
            let factor = json.opt_f64(&["partial_rotary_factor"])?.unwrap_or(0.5);
            (factor * head_dim as f64) as usize
        }
        Family::Qwen2 | Family::Phi3 => head_dim,
    };
    if rotary_dim == 0 || rotary_dim % 2 != 0 || rotary_dim > head_dim {
        return Err(json.error(format!(
            "rotary dimension {rotary_dim} must be even and at most the head size {head_dim}"
        )));
    }
    if family == Family::Phi3 {
        if let Some(scaling) = json.value.get("rope_scaling").filter(|v| !v.is_null()) {
            return Err(json.error(format!(
                "rope_scaling {scaling} is not supported (Imp-v1.5-4B uses none)"
            )));
        }
    }
    let norm_eps = match family {
        Family::Phi2 => json
            .opt_f64(&["layer_norm_eps", "layer_norm_epsilon"])?
            .unwrap_or(1e-5),
        Family::Qwen2 => json.opt_f64(&["rms_norm_eps"])?.unwrap_or(1e-6),
        Family::Phi3 => json.opt_f64(&["rms_norm_eps"])?.unwrap_or(1e-5),
    };
    check_activation(json, family)?;
    let rope_theta = json.opt_f64(&["rope_theta"])?.unwrap_or(10_000.0);
    if !(rope_theta.is_finite() && rope_theta > 0.0) {
        return Err(json.error(format!("rope_theta {rope_theta} must be positive")));
    }
    if !(norm_eps.is_finite() && norm_eps > 0.0 && norm_eps < 1.0) {
        return Err(json.error(format!("norm epsilon {norm_eps} must be in (0, 1)")));
    }
    let residual_dropout = json.opt_f64(&["resid_pdrop"])?.unwrap_or(0.0);
    if !(0.0..1.0).contains(&residual_dropout) {
        return Err(json.error(format!("resid_pdrop {residual_dropout} must be in [0, 1)")));
    }
    Ok(DecoderConfig {
        family,
        vocab_size: json.positive(&["vocab_size"])?,
        hidden_size,
        intermediate_size,
        num_layers,
        num_heads,
        num_kv_heads,
        head_dim,
        rotary_dim,
        rope_theta,
        norm_eps,
        residual_dropout,
    })
}

/// Keys of the decoder's layer count (transformers', Microsoft's Phi-2).
const LAYER_KEYS: &[&str] = &["num_hidden_layers", "n_layer"];

/// The decoder's activation, when declared, must be the one the family's MLP computes.
fn check_activation(json: &Json, family: Family) -> Result<()> {
    let Some((key, value)) = json.find(&["hidden_act", "activation_function"]) else {
        return Ok(());
    };
    let supported: &[&str] = match family.mlp() {
        Mlp::Gelu => &["gelu_new", "gelu_pytorch_tanh"],
        Mlp::SwiGlu => &["silu", "swish"],
    };
    match value.as_str() {
        Some(act) if supported.contains(&act) => Ok(()),
        _ => Err(json.error(format!(
            "{key} {value} is not supported for {}: expected `{}`",
            family.label(),
            supported.join("` or `")
        ))),
    }
}

/// SigLIP settings: heads and epsilon from `vision_tower_config`, else a `siglip*/config.json`
/// sub-folder (as Imp-v1.5-3B-196 ships), else so400m's; every size from the stored tensors.
fn vision_config(
    files: &ConfigFiles,
    json: &Json,
    checkpoint: &dyn TensorShapes,
    style: NamingStyle,
) -> Result<(VisionConfig, String)> {
    let mut config = VisionConfig::so400m();
    let (declared, source) = declared_vision(files, json)?;
    if let Some(declared) = &declared {
        apply_declared_vision(&mut config, declared)?;
    }
    vision_sizes_from_tensors(&mut config, checkpoint, style)?;
    let declared_layers = match &declared {
        Some(declared) => check_declared_vision(&mut config, declared)?,
        None => None,
    };
    check_select_layer(json, &config, declared_layers)?;
    let hidden = config.hidden_size;
    if config.num_heads == 0 || !hidden.is_multiple_of(config.num_heads) {
        return Err(Error::config(
            &json.path,
            format!(
                "vision width {hidden} is not divisible by {} heads",
                config.num_heads
            ),
        ));
    }
    Ok((config, source))
}

/// Where the vision settings are declared, if anywhere, and a label of that place.
fn declared_vision(files: &ConfigFiles, json: &Json) -> Result<(Option<Json>, String)> {
    if let Some(value) = json
        .value
        .get("vision_tower_config")
        .filter(|v| v.is_object())
    {
        let declared = Json {
            path: json.path.clone(),
            value: value.clone(),
        };
        return Ok((Some(declared), "config.json vision_tower_config".into()));
    }
    match &files.vision {
        Some((name, text)) => {
            let path = files.root.join(name);
            let sub = Json::parse(&path, text)?;
            // A full SiglipConfig nests the vision part.
            let value = sub.value.get("vision_config").cloned().unwrap_or(sub.value);
            Ok((Some(Json { path, value }), name.clone()))
        }
        None => Ok((None, "so400m defaults".into())),
    }
}

/// Takes heads, epsilon and activation from a declared config.
fn apply_declared_vision(config: &mut VisionConfig, declared: &Json) -> Result<()> {
    if let Some(heads) = declared.opt_usize(&["num_attention_heads"])? {
        config.num_heads = heads;
    }
    if let Some(eps) = declared.opt_f64(&["layer_norm_eps"])? {
        config.layer_norm_eps = eps;
    }
    if let Some(act) = declared.opt_str("hidden_act")? {
        if act != "gelu_pytorch_tanh" {
            return Err(declared.error(format!(
                "vision hidden_act `{act}` is not supported (SigLIP uses gelu_pytorch_tanh)"
            )));
        }
    }
    if !(config.layer_norm_eps.is_finite() && config.layer_norm_eps > 0.0) {
        return Err(declared.error(format!(
            "vision layer_norm_eps {} must be positive",
            config.layer_norm_eps
        )));
    }
    Ok(())
}

/// Checks the sizes a declared vision config states against the stored tensors, and takes its
/// image size (the stride-14 convolution of so400m-384 drops 6 pixels, so the grid alone
/// cannot tell it). Returns the declared layer count: the whole tower, before Imp drops layers.
fn check_declared_vision(config: &mut VisionConfig, declared: &Json) -> Result<Option<usize>> {
    let stored = [
        ("hidden_size", config.hidden_size),
        ("intermediate_size", config.intermediate_size),
        ("patch_size", config.patch_size),
    ];
    for (key, stored) in stored {
        match declared.opt_usize(&[key])? {
            Some(value) if value != stored => {
                return Err(declared.error(format!(
                    "vision {key} {value} does not match the stored tensors ({stored})"
                )))
            }
            _ => {}
        }
    }
    if let Some(size) = declared.opt_usize(&["image_size"])? {
        let grid = config.position_grid;
        if size / config.patch_size != grid {
            return Err(declared.error(format!(
                "vision image_size {size} gives a {0}x{0} patch grid, but the stored position \
                 table is {grid}x{grid} ({1} px with {2} px patches)",
                size / config.patch_size,
                grid * config.patch_size,
                config.patch_size
            )));
        }
        config.image_size = size;
    }
    let stored = config.num_layers;
    let layers = declared.opt_usize(&["num_hidden_layers"])?;
    match layers {
        Some(n) if n != stored && n != stored + 1 => Err(declared.error(format!(
            "vision num_hidden_layers {n} does not match the {stored} layers stored (a tower \
             of {stored}, or of {} with its last layer dropped as Imp does)",
            stored + 1
        ))),
        _ => Ok(layers),
    }
}

/// `mm_vision_select_layer` must pick the output of the last stored layer: Imp keeps the layers
/// up to the one it selects. Without a declared tower, the released convention (one layer
/// dropped, select -2) is assumed.
fn check_select_layer(
    json: &Json,
    config: &VisionConfig,
    declared_layers: Option<usize>,
) -> Result<()> {
    let Some(value) = json
        .value
        .get("mm_vision_select_layer")
        .filter(|v| !v.is_null())
    else {
        return Ok(());
    };
    let stored = config.num_layers;
    let tower = declared_layers.unwrap_or(stored + 1);
    // hidden_states has the embeddings first, then one entry per layer of the tower.
    let selected = value
        .as_i64()
        .map(|n| if n < 0 { tower as i64 + 1 + n } else { n });
    if selected != Some(stored as i64) {
        return Err(json.error(format!(
            "mm_vision_select_layer {value} selects {} of a {tower}-layer tower, but the \
             checkpoint stores {stored} vision layers (select {} for their output)",
            selected.map_or("nothing".into(), |n| format!("hidden state {n}")),
            stored as i64 - tower as i64 - 1
        )));
    }
    Ok(())
}

/// Width, patch size, position grid, layer count and MLP width, read from the stored tensors.
fn vision_sizes_from_tensors(
    config: &mut VisionConfig,
    checkpoint: &dyn TensorShapes,
    style: NamingStyle,
) -> Result<()> {
    let names = style.vision_embeddings();
    let patch = checkpoint.shape(&names.patch_weight)?;
    let [hidden, channels, kh, kw] = patch[..] else {
        return Err(Error::tensor(
            &names.patch_weight,
            format!("has shape {patch:?}, expected [hidden, 3, patch, patch]"),
        ));
    };
    if channels != 3 || kh != kw || kh == 0 {
        return Err(Error::tensor(
            &names.patch_weight,
            format!("has shape {patch:?}, expected [hidden, 3, patch, patch]"),
        ));
    }
    config.hidden_size = hidden;
    config.patch_size = kh;
    let positions = checkpoint.shape(&names.position)?;
    let rows = positions.first().copied().unwrap_or(0);
    let grid = (rows as f64).sqrt().round() as usize;
    if rows == 0 || grid * grid != rows {
        return Err(Error::tensor(
            &names.position,
            format!("has {rows} rows, not a square grid of patches"),
        ));
    }
    config.position_grid = grid;
    // so400m's 384 px when it yields this grid; a declared size is checked later.
    if config.image_size / config.patch_size != grid {
        config.image_size = grid * config.patch_size;
    }
    config.num_layers = style.count_vision_layers(checkpoint)?;
    let fc1_name = style.vision_layer(0).fc1.weight.names()[0].to_owned();
    let fc1 = checkpoint.shape(&fc1_name)?;
    let [intermediate, _] = fc1[..] else {
        return Err(Error::tensor(
            fc1_name,
            format!("has shape {fc1:?}, expected 2 dimensions"),
        ));
    };
    config.intermediate_size = intermediate;
    Ok(())
}

fn siglip_subfolder(dir: &Path) -> Result<Option<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("siglip"))
                && p.join("config.json").is_file()
        })
        .map(|p| p.join("config.json"))
        .collect();
    found.sort();
    Ok(found.into_iter().next())
}

/// A parsed JSON config with typed accessors whose errors name the file and key.
struct Json {
    path: PathBuf,
    value: Value,
}

impl Json {
    fn parse(path: &Path, text: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| Error::config(path, format!("invalid JSON ({e})")))?;
        if !value.is_object() {
            return Err(Error::config(path, "expected a JSON object"));
        }
        Ok(Self {
            path: path.to_path_buf(),
            value,
        })
    }

    fn error(&self, message: String) -> Error {
        Error::config(&self.path, message)
    }

    fn has(&self, key: &str) -> bool {
        self.value.get(key).is_some_and(|v| !v.is_null())
    }

    /// The first of `keys` that is present and not null.
    fn find<'k>(&self, keys: &[&'k str]) -> Option<(&'k str, &Value)> {
        keys.iter()
            .find_map(|k| self.value.get(*k).filter(|v| !v.is_null()).map(|v| (*k, v)))
    }

    fn opt_usize(&self, keys: &[&str]) -> Result<Option<usize>> {
        self.find(keys)
            .map(|(key, v)| {
                v.as_u64().map(|n| n as usize).ok_or_else(|| {
                    self.error(format!(
                        "key `{key}` must be a non-negative integer, found {v}"
                    ))
                })
            })
            .transpose()
    }

    /// A count that must be at least 1.
    fn positive(&self, keys: &[&str]) -> Result<usize> {
        match self.usize(keys)? {
            0 => Err(self.error(format!(
                "key `{}` must be at least 1, found 0",
                self.key_of(keys)
            ))),
            n => Ok(n),
        }
    }

    /// The first of `keys` present, for messages (the first key when none is).
    fn key_of<'k>(&self, keys: &[&'k str]) -> &'k str {
        self.find(keys).map_or(keys[0], |(key, _)| key)
    }

    fn usize(&self, keys: &[&str]) -> Result<usize> {
        self.opt_usize(keys)?
            .ok_or_else(|| self.error(format!("missing key `{}`", keys.join("` or `"))))
    }

    fn opt_f64(&self, keys: &[&str]) -> Result<Option<f64>> {
        self.find(keys)
            .map(|(key, v)| {
                v.as_f64()
                    .ok_or_else(|| self.error(format!("key `{key}` must be a number, found {v}")))
            })
            .transpose()
    }

    fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        self.find(&[key])
            .map(|(key, v)| {
                v.as_str()
                    .ok_or_else(|| self.error(format!("key `{key}` must be a string, found {v}")))
            })
            .transpose()
    }

    fn str(&self, key: &str) -> Result<&str> {
        self.opt_str(key)?
            .ok_or_else(|| self.error(format!("missing key `{key}`")))
    }

    /// A token id or list of ids; absent means none.
    fn ids(&self, key: &str) -> Result<Vec<u32>> {
        let bad = |v: &Value| {
            self.error(format!(
                "key `{key}` must be a token id or a list of ids, found {v}"
            ))
        };
        match self.find(&[key]) {
            None => Ok(Vec::new()),
            Some((_, Value::Array(items))) => items
                .iter()
                .map(|v| v.as_u64().map(|n| n as u32).ok_or_else(|| bad(v)))
                .collect(),
            Some((_, v)) => Ok(vec![v.as_u64().ok_or_else(|| bad(v))? as u32]),
        }
    }
}
