//! Parity with the PyTorch reference on tiny random-weight checkpoints in the exact layout of
//! each released Imp model. Fixtures and expected outputs come from
//! `scripts/fixtures/gen_models.py` (transformers' SiglipVisionModel, PhiForCausalLM,
//! Qwen2ForCausalLM, Phi3ForCausalLM in f32).

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::DType;
use candle_core::{Device, Tensor};
use imp::preprocess::load_rgb;
use imp::{KvCache, LoadOptions, Prompt, Turn};

use crate::support::{
    answer, expected, load, max_abs_diff, model_dir, read_tensors, Expected, MODELS,
};

const TOLERANCE: f32 = 1e-4;

struct Fixture {
    dir: PathBuf,
    expected: Expected,
    tensors: HashMap<String, Tensor>,
}

fn fixture(name: &str) -> Fixture {
    let dir = model_dir(name);
    Fixture {
        tensors: read_tensors(&dir.join("expected.safetensors")),
        expected: expected(name),
        dir,
    }
}

/// Checks every stage against the reference, each fed the reference's own input so that an
/// error is pinned to the stage that made it.
fn check(name: &str, style: &str) {
    let f = fixture(name);
    let e = &f.expected;
    assert_eq!(e.style, style, "{name}: checkpoint style");
    // The reference keeps its keys and values in f32.
    let options = LoadOptions {
        kv_cache: Some(KvCache::F32),
        ..Default::default()
    };
    let model = load(&f.dir, &options);
    let family = model.config().decoder.family;

    let image = load_rgb(&f.dir.join(&e.image)).unwrap();
    let pixels = model
        .preprocessor()
        .preprocess(&image, &Device::Cpu)
        .unwrap();
    let d = max_abs_diff(&pixels, &f.tensors["pixel_values"]);
    assert!(d <= 1e-6, "{name}: pixels differ by {d}");

    let features = model.vision_features(&f.tensors["pixel_values"]).unwrap();
    assert_eq!(features.dims()[0], e.visual_tokens, "{name}: visual tokens");
    let vision_error = max_abs_diff(&features, &f.tensors["vision_features"]);
    assert!(
        vision_error <= TOLERANCE,
        "{name}: vision features differ by {vision_error}"
    );

    let projected = model.project(&f.tensors["vision_features"]).unwrap();
    let projector_error = max_abs_diff(&projected, &f.tensors["projector_output"]);
    assert!(
        projector_error <= TOLERANCE,
        "{name}: projector output differs by {projector_error}"
    );

    let prompt = Prompt::Question(e.question.clone()).render(family, 1);
    assert_eq!(prompt, e.prompt, "{name}: template");
    let ids = model.tokenize_prompt(&prompt).unwrap();
    assert_eq!(ids, e.prompt_ids, "{name}: prompt ids");

    let turns = e
        .chat
        .turns
        .iter()
        .map(|(user, assistant)| Turn {
            user: user.clone(),
            assistant: assistant.clone(),
        })
        .collect();
    let chat = Prompt::Chat(turns).render(family, 1);
    assert_eq!(chat, e.chat.prompt, "{name}: multi-turn template");
    assert_eq!(
        model.tokenize_prompt(&chat).unwrap(),
        e.chat.prompt_ids,
        "{name}: multi-turn ids"
    );

    let embeds = model
        .splice(&ids, &[f.tensors["projector_output"].clone()])
        .unwrap();
    assert_eq!(embeds.dims()[0], e.prompt_tokens, "{name}: spliced length");
    let mut session = model.new_session();
    let hidden = model.decoder().forward(&embeds, &mut session).unwrap();
    let logits = Tensor::new(model.decoder().last_logits(&hidden).unwrap(), &Device::Cpu).unwrap();
    let logits_error = max_abs_diff(&logits, &f.tensors["first_logits"]);
    assert!(
        logits_error <= TOLERANCE,
        "{name}: first-step logits differ by {logits_error}"
    );

    let mut streamed = String::new();
    let generation = answer(&model, name, &mut |t| streamed.push_str(t));
    assert_eq!(generation.tokens, e.greedy_tokens, "{name}: greedy tokens");
    assert_eq!(
        generation.prompt_tokens, e.prompt_tokens,
        "{name}: prompt tokens"
    );
    assert_eq!(generation.text, e.text, "{name}: text");
    assert_eq!(streamed.trim_end(), e.text, "{name}: streamed text");
    let mut logprob_error = 0f32;
    for (step, (ours, theirs)) in generation
        .top_logprobs
        .iter()
        .zip(&e.top_logprobs)
        .enumerate()
    {
        for ((id, lp), (ref_id, ref_lp)) in ours.iter().zip(theirs) {
            assert_eq!(id, ref_id, "{name}: top ids at step {step}");
            logprob_error = logprob_error.max((lp - ref_lp).abs());
            assert!(
                (lp - ref_lp).abs() <= TOLERANCE,
                "{name}: logprob of {id} at step {step}: {lp} vs {ref_lp}"
            );
        }
    }
    // Reported by `cargo test -- --nocapture` for the record of parity errors per model.
    eprintln!(
        "parity {name}: max abs error vision {vision_error:.2e}, projector {projector_error:.2e}, \
         first logits {logits_error:.2e}, top logprobs {logprob_error:.2e}"
    );
}

#[test]
fn every_released_layout_matches_the_reference() {
    for (name, style) in MODELS {
        check(name, style);
    }
}

/// A prompt fed through the layers a few rows at a time (each chunk attending to the cached
/// keys of the chunks before it) gives the reference's logits and the hidden rows of one pass.
#[test]
fn a_prompt_fed_in_chunks_matches_the_reference() {
    for (name, _) in MODELS {
        let f = fixture(name);
        // The reference keeps its keys and values in f32.
        let options = LoadOptions {
            kv_cache: Some(KvCache::F32),
            ..Default::default()
        };
        let model = load(&f.dir, &options);
        let embeds = model
            .splice(
                &f.expected.prompt_ids,
                &[f.tensors["projector_output"].clone()],
            )
            .unwrap();
        let tokens = embeds.dims()[0];
        let whole = model
            .decoder()
            .forward_in_chunks(&embeds, &mut model.new_session(), tokens)
            .unwrap();
        for chunk in [1, 3, tokens / 2, tokens - 1] {
            let mut session = model.new_session();
            let hidden = model
                .decoder()
                .forward_in_chunks(&embeds, &mut session, chunk)
                .unwrap();
            assert_eq!(session.len(), tokens, "{name}, chunks of {chunk}");
            let rows_error = max_abs_diff(&hidden, &whole);
            assert!(
                rows_error <= TOLERANCE,
                "{name}, chunks of {chunk}: hidden rows differ from one pass by {rows_error}"
            );
            let logits = model.decoder().last_logits(&hidden).unwrap();
            let logits = Tensor::new(logits, &Device::Cpu).unwrap();
            let logits_error = max_abs_diff(&logits, &f.tensors["first_logits"]);
            assert!(
                logits_error <= TOLERANCE,
                "{name}, chunks of {chunk}: first-step logits differ by {logits_error}"
            );
        }
        let mut session = model.new_session();
        let err = model
            .decoder()
            .forward_in_chunks(&embeds, &mut session, 0)
            .unwrap_err();
        assert!(err.to_string().contains("in chunks of 0"), "{err}");
        assert_eq!(session.len(), 0, "{name}: a refused prefill stores nothing");
    }
}

/// Half-precision compute keeps the reference's first-step logits within a bound, relative to the
/// largest logit, measured on these fixtures (f16 / bf16 rounding of every activation).
fn half_precision_logits_error(name: &str, dtype: DType) -> f32 {
    let f = fixture(name);
    let options = LoadOptions {
        dtype,
        ..Default::default()
    };
    let model = load(&f.dir, &options);
    let projected = model
        .project(&f.tensors["vision_features"].to_dtype(dtype).unwrap())
        .unwrap();
    let embeds = model.splice(&f.expected.prompt_ids, &[projected]).unwrap();
    let mut session = model.new_session();
    let hidden = model.decoder().forward(&embeds, &mut session).unwrap();
    let logits = Tensor::new(model.decoder().last_logits(&hidden).unwrap(), &Device::Cpu).unwrap();
    let scale = f.tensors["first_logits"]
        .abs()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    max_abs_diff(&logits, &f.tensors["first_logits"]) / scale
}

#[test]
fn f16_and_bf16_compute_stay_close_to_f32() {
    for name in [
        "imp-v1.5-3b-phi2",
        "imp-v1.5-2b-qwen1.5",
        "imp-v1.5-4b-phi3",
    ] {
        let f16 = half_precision_logits_error(name, DType::F16);
        let bf16 = half_precision_logits_error(name, DType::BF16);
        eprintln!("{name}: relative first-logit error f16 {f16:.2e}, bf16 {bf16:.2e}");
        assert!(
            f16 < 0.005,
            "{name}: f16 logits off by {f16} of the largest"
        );
        assert!(
            bf16 < 0.03,
            "{name}: bf16 logits off by {bf16} of the largest"
        );
    }
}

/// Next-token log-probabilities after the prompt and after each of the reference's greedy
/// tokens, fed one at a time as decoding does (each step reads the whole cache), with keys and
/// values stored as `kv_cache`: `[steps, vocab]`.
fn decode_logprobs(name: &str, kv_cache: KvCache) -> Tensor {
    let f = fixture(name);
    let options = LoadOptions {
        kv_cache: Some(kv_cache),
        ..Default::default()
    };
    let model = load(&f.dir, &options);
    let decoder = model.decoder();
    let mut session = model.new_session();
    assert_eq!(session.kv_cache(), kv_cache);
    let embeds = model
        .splice(
            &f.expected.prompt_ids,
            &[f.tensors["projector_output"].clone()],
        )
        .unwrap();
    let mut hidden = decoder.forward(&embeds, &mut session).unwrap();
    let mut steps = vec![decoder.last_logits(&hidden).unwrap()];
    for &token in &f.expected.greedy_tokens {
        hidden = decoder
            .forward(&decoder.embed(&[token]).unwrap(), &mut session)
            .unwrap();
        steps.push(decoder.last_logits(&hidden).unwrap());
    }
    let vocab = steps[0].len();
    let logits = Tensor::from_vec(steps.concat(), (steps.len(), vocab), &Device::Cpu).unwrap();
    candle_nn::ops::log_softmax(&logits, candle_core::D::Minus1).unwrap()
}

/// Mean `KL(f32 cache || narrow cache)` per step, in nats, and the fraction of steps whose
/// most likely token is the same.
fn cache_divergence(f32_cache: &Tensor, narrow: &Tensor) -> (f32, f32) {
    use candle_core::D;
    let kl = (f32_cache.exp().unwrap() * (f32_cache - narrow).unwrap())
        .unwrap()
        .sum(D::Minus1)
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let same = f32_cache
        .argmax(D::Minus1)
        .unwrap()
        .eq(&narrow.argmax(D::Minus1).unwrap())
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    (kl, same)
}

#[test]
fn narrower_kv_caches_decode_close_to_the_f32_cache() {
    for (name, _) in MODELS {
        let reference = decode_logprobs(name, KvCache::F32);
        for (kv_cache, max_kl) in [
            (KvCache::F16, 1e-5),
            (KvCache::BF16, 1e-3),
            (KvCache::Q8, 1e-3),
        ] {
            let narrow = decode_logprobs(name, kv_cache);
            let (kl, top1) = cache_divergence(&reference, &narrow);
            eprintln!("{name}: {kv_cache} cache, mean KL {kl:.2e}, top-1 agreement {top1:.3}");
            // Rounded keys and values change the logits, if only slightly.
            assert!(
                max_abs_diff(&reference, &narrow) > 0.0,
                "{name}: {kv_cache} cache unused"
            );
            assert!(kl.abs() < max_kl, "{name}: {kv_cache} cache KL {kl}");
            assert!(top1 >= 0.9, "{name}: {kv_cache} cache top-1 {top1}");
        }
    }
}
