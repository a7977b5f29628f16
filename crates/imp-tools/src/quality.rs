//! What a quantization plan, and a KV cache narrower than f32, cost in quality: the f32 model
//! (f32 cache) answers every image question greedily, then each variant (the whole plan, only
//! the vision side, only the language model, only the cache) is teacher-forced along that same
//! answer, and its next-token distribution at every answer
//! position (plus the one after it) is compared with the f32 model's: the KL divergence
//! `KL(f32 || quantized)` and whether the most likely tokens agree.

use std::path::Path;

use candle_core::{DType, Tensor, D};
use image::RgbImage;
use serde::Serialize;

use imp::quant::Quantization;
use imp::{ImpModel, KvCache, LoadOptions, Prompt};

use crate::{Error, Result};

/// The image questions: every question is asked about every image.
pub struct ReportInput {
    pub images: Vec<RgbImage>,
    pub questions: Vec<String>,
    /// Length cap of the f32 model's answers.
    pub max_new_tokens: usize,
}

/// How far one variant's predictions are from the f32 model's.
#[derive(Debug, Clone, Serialize)]
pub struct Divergence {
    /// `all`, `vision only`, `llm only` or `kv cache only`.
    pub variant: &'static str,
    /// The formats of this variant, e.g. `vision q8_0, projector q8_0, llm compute dtype, kv
    /// cache f16`.
    pub plan: String,
    /// KL divergence of the next-token distribution in nats, averaged over all positions.
    pub mean_kl: f64,
    /// Its 99th percentile (nearest rank).
    pub p99_kl: f64,
    /// Fraction of positions whose most likely token is the f32 model's.
    pub top1_agreement: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Image-question pairs.
    pub samples: usize,
    /// Positions compared per variant.
    pub positions: usize,
    pub variants: Vec<Divergence>,
}

/// Compares `plan` applied to the model folder `path` with its f32 form (f32 weights, f32 KV
/// cache). `options` gives the compute dtype of the quantized variants (the reference always
/// runs in f32), the image settings and the KV cache of every variant; a cache narrower than
/// f32 adds a variant of its own (`kv cache only`), and is then enough to report on without a
/// plan. `on_progress(done, total)` follows the forward passes.
pub fn quality_report(
    path: &Path,
    plan: Quantization,
    options: &LoadOptions,
    input: &ReportInput,
    on_progress: &mut dyn FnMut(usize, usize),
) -> Result<Report> {
    let kv_cache = options
        .kv_cache
        .unwrap_or_else(|| KvCache::default_for(&options.device, options.dtype));
    if plan.is_none() && kv_cache == KvCache::F32 {
        return Err(Error::InvalidArgument(
            "the quality report needs a quantization plan (--quant) or a KV cache narrower than \
             f32 (--kv-cache)"
                .into(),
        ));
    }
    if input.images.is_empty() || input.questions.is_empty() {
        return Err(Error::InvalidArgument(
            "the quality report needs at least one image and one question".into(),
        ));
    }
    let mut variants: Vec<(&'static str, Quantization)> = Vec::new();
    if !plan.is_none() {
        variants.push(("all", plan));
        for (name, variant) in [
            ("vision only", plan.vision_only()),
            ("llm only", plan.llm_only()),
        ] {
            if !variant.is_none() && variant != plan {
                variants.push((name, variant));
            }
        }
    }
    if kv_cache != KvCache::F32 {
        variants.push(("kv cache only", Quantization::default()));
    }
    let samples = input.images.len() * input.questions.len();
    // The reference answers (one greedy pass and one teacher-forced pass), then one
    // teacher-forced pass per variant.
    let total = samples * (2 + variants.len());
    let mut done = 0;
    let mut step = || {
        done += 1;
        on_progress(done, total);
    };

    let reference = ImpModel::load(
        path,
        &LoadOptions {
            dtype: DType::F32,
            quantization: Quantization::default(),
            kv_cache: Some(KvCache::F32),
            ..options.clone()
        },
    )?;
    let prompts = input
        .questions
        .iter()
        .map(|q| {
            let text = Prompt::Question(q.clone()).render(reference.config().decoder.family, 1);
            reference.tokenize_prompt(&text)
        })
        .collect::<imp::Result<Vec<_>>>()?;
    let mut answers = Vec::with_capacity(samples);
    let mut expected = Vec::with_capacity(samples);
    for image in &input.images {
        let rows = image_rows(&reference, image)?;
        for ids in &prompts {
            let answer = greedy(&reference, ids, &rows, input.max_new_tokens)?;
            step();
            expected.push(teacher_forced(&reference, ids, &rows, &answer)?);
            step();
            answers.push(answer);
        }
    }
    drop(reference);

    let mut report = Report {
        samples,
        positions: answers.iter().map(|a| a.len() + 1).sum(),
        variants: Vec::new(),
    };
    for (variant, variant_plan) in variants {
        let model = ImpModel::load(
            path,
            &LoadOptions {
                quantization: variant_plan,
                kv_cache: Some(kv_cache),
                ..options.clone()
            },
        )?;
        let mut kls = Vec::with_capacity(report.positions);
        let mut agreeing = 0;
        let mut sample = 0;
        for image in &input.images {
            let rows = image_rows(&model, image)?;
            for ids in &prompts {
                let ours = teacher_forced(&model, ids, &rows, &answers[sample])?;
                let theirs = &expected[sample];
                let kl = (theirs.exp()? * (theirs - &ours)?)?.sum(D::Minus1)?;
                kls.extend(kl.to_vec1::<f32>()?.into_iter().map(f64::from));
                let same = theirs
                    .argmax(D::Minus1)?
                    .eq(&ours.argmax(D::Minus1)?)?
                    .to_dtype(DType::U32)?;
                agreeing += same.sum_all()?.to_scalar::<u32>()? as usize;
                sample += 1;
                step();
            }
        }
        let mean_kl = kls.iter().sum::<f64>() / kls.len() as f64;
        kls.sort_by(f64::total_cmp);
        let rank = (0.99 * kls.len() as f64).ceil() as usize;
        report.variants.push(Divergence {
            variant,
            plan: if variant_plan.is_none() {
                format!("weights in compute dtype, kv cache {kv_cache}")
            } else {
                format!("{variant_plan}, kv cache {kv_cache}")
            },
            mean_kl,
            p99_kl: kls[rank.max(1) - 1],
            top1_agreement: agreeing as f64 / kls.len() as f64,
        });
    }
    Ok(report)
}

/// The projected rows of one image.
fn image_rows(model: &ImpModel, image: &RgbImage) -> Result<Tensor> {
    let pixels = model.preprocessor().preprocess(image, model.device())?;
    Ok(model.project(&model.vision_features(&pixels)?)?)
}

/// The greedy answer, without its stop token.
fn greedy(model: &ImpModel, ids: &[u32], rows: &Tensor, max_new_tokens: usize) -> Result<Vec<u32>> {
    let decoder = model.decoder();
    let mut session = model.new_session();
    let mut hidden = decoder.forward(
        &model.splice(ids, std::slice::from_ref(rows))?,
        &mut session,
    )?;
    let room = model.config().max_context.saturating_sub(session.len());
    let mut answer = Vec::new();
    while answer.len() < max_new_tokens.min(room) {
        let logits = decoder.last_logits(&hidden)?;
        let token = logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0)))
            .map(|(id, _)| id as u32)
            .expect("a non-empty vocabulary");
        if model.stop_token_ids().contains(&token) {
            break;
        }
        answer.push(token);
        hidden = decoder.forward(&decoder.embed(&[token])?, &mut session)?;
    }
    Ok(answer)
}

/// Next-token log-probabilities `[answer + 1, vocab]` at the prompt's last position and after
/// each answer token, from one pass over the prompt and the whole answer.
fn teacher_forced(model: &ImpModel, ids: &[u32], rows: &Tensor, answer: &[u32]) -> Result<Tensor> {
    let decoder = model.decoder();
    let mut embeds = model.splice(ids, std::slice::from_ref(rows))?;
    if !answer.is_empty() {
        embeds = Tensor::cat(&[embeds, decoder.embed(answer)?], 0)?;
    }
    let hidden = decoder.forward(&embeds, &mut model.new_session())?;
    let positions = answer.len() + 1;
    let last = hidden.narrow(0, hidden.dim(0)? - positions, positions)?;
    Ok(candle_nn::ops::log_softmax(
        &decoder.logits(&last)?,
        D::Minus1,
    )?)
}
