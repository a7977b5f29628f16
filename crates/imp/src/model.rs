//! A loaded Imp model: tokenizer, preprocessor, vision tower, projector and decoder, all
//! immutable, plus the splice that puts projected image rows in place of `<image>` tokens.
//! Conversations run in [`Session`]s created from it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use candle_core::{DType, Device, Tensor};

use crate::adapter::Adapter;
use crate::checkpoint::{self, TensorSource, Weights};
use crate::config::{AspectMode, Family, ImpConfig};
use crate::constraint::{Constraint, Grammar, Vocabulary};
use crate::models::{pool_patches, Decoder, Projector, VisionTower};
use crate::preprocess::ImagePreprocessor;
use crate::quant::{self, Part, Quantization, WeightGroup};
use crate::session::{KvCache, Session};
use crate::template::{SpecialTokens, IMAGE_MARKER};
use crate::tokenizer::ImpTokenizer;
use crate::{Error, Result};

#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Compute dtype of every weight and activation (softmax always runs in f32).
    pub dtype: DType,
    pub device: Device,
    /// Run SigLIP at this many pixels a side (a multiple of the patch size) instead of the
    /// trained size, with the position table resized as transformers'
    /// `interpolate_pos_encoding` does.
    pub image_size: Option<usize>,
    /// Average `pool x pool` patch neighbourhoods before the projector (1 = off), e.g. 2 turns
    /// 27x27 = 729 visual tokens into 14x14 = 196.
    pub pool: usize,
    /// Storage format of each part's matrices, converted as they are read (a folder only; a
    /// GGUF file is used as stored).
    pub quantization: Quantization,
    /// LoRA (and projector) weights applied unmerged on top of the checkpoint's.
    pub adapter: Option<Arc<Adapter>>,
    /// How non-square images are made square, instead of the config's `image_aspect_ratio`.
    pub aspect: Option<AspectMode>,
    /// Storage format of every session's keys and values; `None`: f16 on the CPU, the compute
    /// dtype elsewhere ([`KvCache::default_for`]).
    pub kv_cache: Option<KvCache>,
    /// Training only: dropout rate on each decoder block's attention and MLP outputs before
    /// the residual sum (the reference trains Phi-2 with its config's `resid_pdrop`, 0.1).
    /// Inference keeps the default 0.
    pub residual_dropout: f32,
}

/// A compute dtype by the name every front end takes: "f32", "f16" or "bf16".
pub fn dtype_from_name(name: &str) -> Result<DType> {
    match name {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        _ => Err(Error::InvalidArgument(format!(
            "dtype `{name}` is not one of f32, f16, bf16"
        ))),
    }
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dtype: DType::F32,
            device: Device::Cpu,
            image_size: None,
            pool: 1,
            quantization: Quantization::default(),
            adapter: None,
            aspect: None,
            kv_cache: None,
            residual_dropout: 0.0,
        }
    }
}

/// What `imp info` reports about a checkpoint.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub variant: &'static str,
    pub parameters_vision: usize,
    pub parameters_projector: usize,
    pub parameters_llm: usize,
    /// Stored element count per dtype.
    pub storage: BTreeMap<String, usize>,
    /// How each group of weights is held in memory (formats, padding, sizes).
    pub weights: Vec<WeightGroup>,
    /// Weight bytes read to decode one token: every language-model matrix but the embedding.
    pub decode_weight_bytes: usize,
}

pub struct ImpModel {
    config: ImpConfig,
    info: ModelInfo,
    tokenizer: ImpTokenizer,
    preprocessor: ImagePreprocessor,
    vision: VisionTower,
    projector: Projector,
    decoder: Decoder,
    image_token_id: u32,
    bos_token_id: Option<u32>,
    stop_token_ids: Vec<u32>,
    pool: usize,
    kv_cache: KvCache,
    /// Built by the first constrained request: most never need it.
    vocabulary: OnceLock<Vocabulary>,
}

impl ImpModel {
    /// Loads a Hugging Face Imp folder as published by MILVLG, or a GGUF file written by
    /// `imp quantize`.
    pub fn load(path: &Path, options: &LoadOptions) -> Result<Self> {
        Self::from_source(checkpoint::open(path)?.as_ref(), options)
    }

    /// Loads from any source of tensors, such as the synthetic models of `imp-tools`.
    pub fn from_source(checkpoint: &dyn TensorSource, options: &LoadOptions) -> Result<Self> {
        let kv_cache = options
            .kv_cache
            .unwrap_or_else(|| KvCache::default_for(&options.device, options.dtype));
        kv_cache.check_device(&options.device)?;
        let mut config = ImpConfig::load(&checkpoint.config_files()?, checkpoint)?;
        apply_token_budget(&mut config, options)?;
        let mut tokenizer = checkpoint.tokenizer()?;
        let special = SpecialTokens::add_to(&mut tokenizer, &config)?;

        let style = config.style;
        let mut weights = Weights::new(
            checkpoint,
            style,
            options.dtype,
            options.device.clone(),
            options.quantization,
        )?;
        if let Some(adapter) = &options.adapter {
            weights = weights.with_adapter(adapter);
        }
        let vision = VisionTower::load(&weights, style, &config.vision)?;
        let projector = Projector::load(&weights, style, &config.projector)?;
        let decoder = Decoder::load(
            &weights,
            style,
            &config.decoder,
            config.max_context,
            options.residual_dropout,
        )?;
        weights.check_adapter_used()?;

        let count = |prefix: &str| -> usize {
            checkpoint
                .tensor_names()
                .filter(|n| n.starts_with(prefix))
                .map(|n| {
                    checkpoint
                        .shape(n)
                        .map_or(0, |s| s.iter().product::<usize>())
                })
                .sum()
        };
        let parameters_vision = count(&style.vision_prefix());
        let parameters_projector = count(&style.projector_prefix());
        let total = count("");
        let weights = weights.into_stored();
        // The embedding table is read a row at a time; every other language-model matrix is
        // read whole for each token.
        let embedding = quant::group_label(&[style.decoder().embed_tokens.as_str()], "");
        let decode_weight_bytes = weights
            .iter()
            .filter(|g| g.part == Part::Llm && g.width > 0 && g.name != embedding)
            .map(|g| g.bytes)
            .sum();
        let info = ModelInfo {
            variant: variant_name(&config),
            parameters_vision,
            parameters_projector,
            parameters_llm: total - parameters_vision - parameters_projector,
            storage: checkpoint.storage_dtypes(),
            weights,
            decode_weight_bytes,
        };
        Ok(Self {
            preprocessor: ImagePreprocessor::new(config.vision.image_size, config.aspect),
            config,
            info,
            tokenizer,
            vision,
            projector,
            decoder,
            image_token_id: special.image,
            bos_token_id: special.bos,
            stop_token_ids: special.stop,
            pool: options.pool,
            kv_cache,
            vocabulary: OnceLock::new(),
        })
    }

    pub fn config(&self) -> &ImpConfig {
        &self.config
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    pub fn tokenizer(&self) -> &ImpTokenizer {
        &self.tokenizer
    }

    pub fn preprocessor(&self) -> &ImagePreprocessor {
        &self.preprocessor
    }

    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    pub fn image_token_id(&self) -> u32 {
        self.image_token_id
    }

    /// The BOS id the family's tokenizer prepends (Phi-3's `<s>`), if any.
    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos_token_id
    }

    pub fn stop_token_ids(&self) -> &[u32] {
        &self.stop_token_ids
    }

    pub fn device(&self) -> &Device {
        self.decoder.device()
    }

    /// Rows each image contributes to the sequence.
    pub fn image_tokens(&self) -> usize {
        self.config.vision.grid_size().div_ceil(self.pool).pow(2)
    }

    /// Patch neighbourhood averaged before the projector (1 = none).
    pub fn pool(&self) -> usize {
        self.pool
    }

    /// Checks and compiles a constraint on the answer for [`GenerationOptions::grammar`]
    /// (the first call also indexes the vocabulary: tens of milliseconds).
    ///
    /// [`GenerationOptions::grammar`]: crate::GenerationOptions::grammar
    pub fn compile_constraint(&self, constraint: &Constraint) -> Result<Grammar> {
        let vocabulary = match self.vocabulary.get() {
            Some(vocabulary) => vocabulary,
            None => {
                let built = Vocabulary::new(
                    &self.tokenizer,
                    self.config.decoder.vocab_size,
                    &self.stop_token_ids,
                )?;
                self.vocabulary.get_or_init(|| built)
            }
        };
        vocabulary.compile(constraint)
    }

    /// A fresh conversation state for this model, its keys and values in the format chosen at
    /// load ([`LoadOptions::kv_cache`]).
    pub fn new_session(&self) -> Session {
        Session::new(&self.config.decoder, self.kv_cache, self.device())
    }

    /// The format of every session's keys and values.
    pub fn kv_cache(&self) -> KvCache {
        self.kv_cache
    }

    /// SigLIP patch features `[patches, vision_hidden]` of preprocessed `pixels[1, 3, S, S]`.
    pub fn vision_features(&self, pixels: &Tensor) -> Result<Tensor> {
        self.vision.forward(pixels)
    }

    /// Pools (when asked at load) and projects vision features into the decoder's embedding
    /// space: `[patches, vision_hidden] -> [image_tokens, hidden]`.
    pub fn project(&self, features: &Tensor) -> Result<Tensor> {
        let pooled = pool_patches(features, self.config.vision.grid_size(), self.pool)?;
        self.projector.forward(&pooled)
    }

    /// An image's projected rows `[image_tokens, hidden]`: preprocessing, vision tower, projector.
    pub fn embed_image(&self, image: &image::RgbImage) -> Result<Tensor> {
        let pixels = self.preprocessor.preprocess(image, self.device())?;
        self.project(&self.vision_features(&pixels)?)
    }

    /// Token ids of a rendered prompt, one `image_token_id` per `<image>` marker.
    pub fn tokenize_prompt(&self, prompt: &str) -> Result<Vec<u32>> {
        crate::template::tokenize_prompt(
            &self.tokenizer,
            prompt,
            self.bos_token_id,
            self.image_token_id,
        )
    }

    /// Embeds `ids` and replaces each image token with the next image's projected rows
    /// `[image_tokens, hidden]`, giving the spliced sequence `[len, hidden]`.
    pub fn splice(&self, ids: &[u32], images: &[Tensor]) -> Result<Tensor> {
        let markers = ids.iter().filter(|&&id| id == self.image_token_id).count();
        if markers != images.len() {
            return Err(Error::Prompt(format!(
                "the prompt has {markers} `{IMAGE_MARKER}` marker(s) but {} image(s) were given; \
                 each image needs exactly one marker",
                images.len()
            )));
        }
        let mut pieces = Vec::with_capacity(2 * images.len() + 1);
        let mut images = images.iter();
        for segment in ids.split_inclusive(|&id| id == self.image_token_id) {
            let (text, image) = match segment.split_last() {
                Some((&last, text)) if last == self.image_token_id => (text, images.next()),
                _ => (segment, None),
            };
            if !text.is_empty() {
                pieces.push(self.decoder.embed(text)?);
            }
            if let Some(rows) = image {
                pieces.push(rows.to_dtype(self.decoder.dtype())?);
            }
        }
        Ok(Tensor::cat(&pieces, 0)?)
    }
}

/// Checks and applies the run-time image size, aspect mode and pooling of `options`.
fn apply_token_budget(config: &mut ImpConfig, options: &LoadOptions) -> Result<()> {
    let vision = &mut config.vision;
    let patch = vision.patch_size;
    if let Some(size) = options.image_size {
        if size % patch != 0 {
            return Err(Error::InvalidArgument(format!(
                "image size {size} is not a multiple of the patch size {patch}"
            )));
        }
        if size < 2 * patch {
            return Err(Error::InvalidArgument(format!(
                "image size {size} is too small: at least {} px (2x2 patches)",
                2 * patch
            )));
        }
        vision.image_size = size;
    }
    if let Some(aspect) = options.aspect {
        config.aspect = aspect;
    }
    let grid = config.vision.grid_size();
    if options.pool == 0 || options.pool > grid {
        return Err(Error::InvalidArgument(format!(
            "pool {} must be between 1 and the patch grid's side, {grid}",
            options.pool
        )));
    }
    Ok(())
}

fn variant_name(config: &ImpConfig) -> &'static str {
    match (config.decoder.family, config.vision.position_grid) {
        (Family::Phi2, 14) => "Imp-v1.5-3B-196 (Phi-2, 196 px)",
        (Family::Phi2, _) => "imp-v1-3b / Imp-v1.5-3B-Phi2 (Phi-2)",
        (Family::Qwen2, _) => "Imp-v1.5-2B-Qwen1.5",
        (Family::Phi3, _) => "Imp-v1.5-4B-Phi3",
    }
}
