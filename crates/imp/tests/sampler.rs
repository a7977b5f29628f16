//! `imp::sampler` against transformers' own logits processors (fixtures written by
//! scripts/fixtures/gen_sampler.py), plus the properties the fixtures cannot show.

use imp::sampler::{top_logprobs, Sampler, SamplingParams};
use imp::Error;
use serde::Deserialize;

use crate::support::{fixture, read_json};

#[derive(Deserialize)]
struct TransformersOutputs {
    filter: Vec<FilterCase>,
    greedy: Vec<GreedyCase>,
    top_logprobs: Vec<TopLogprobCase>,
}

#[derive(Deserialize)]
struct FilterCase {
    name: String,
    params: Params,
    logits: Vec<f32>,
    history: Vec<u32>,
    ids: Vec<u32>,
    probs: Vec<f32>,
}

#[derive(Deserialize)]
struct Params {
    temperature: f32,
    top_k: Option<usize>,
    top_p: Option<f32>,
    min_p: Option<f32>,
    repetition_penalty: f32,
}

#[derive(Deserialize)]
struct GreedyCase {
    name: String,
    repetition_penalty: f32,
    logits: Vec<f32>,
    history: Vec<u32>,
    id: u32,
}

#[derive(Deserialize)]
struct TopLogprobCase {
    name: String,
    k: usize,
    logits: Vec<f32>,
    ids: Vec<u32>,
    logprobs: Vec<f32>,
}

fn transformers_outputs() -> TransformersOutputs {
    read_json(&fixture("sampler/expected.json"))
}

fn sampler(params: SamplingParams) -> Sampler {
    Sampler::new(params).expect("valid sampling params")
}

/// `ours` holds the reference's ids, in its order, each with a value within `tolerance` of the
/// reference's.
fn assert_same_ids_and_close(
    case: &str,
    quantity: &str,
    ours: &[(u32, f32)],
    ids: &[u32],
    values: &[f32],
    tolerance: f32,
) {
    let our_ids: Vec<u32> = ours.iter().map(|&(id, _)| id).collect();
    assert_eq!(our_ids, ids, "{case}: ids");
    for (&(id, ours), &theirs) in ours.iter().zip(values) {
        assert!(
            (ours - theirs).abs() <= tolerance,
            "{case}: {quantity}({id}) = {ours}, reference {theirs}"
        );
    }
}

#[test]
fn filtered_distribution_matches_transformers() {
    let reference = transformers_outputs();
    assert!(reference.filter.len() >= 15);
    for case in &reference.filter {
        let p = &case.params;
        let sampler = sampler(SamplingParams {
            temperature: p.temperature,
            top_k: p.top_k,
            top_p: p.top_p,
            min_p: p.min_p,
            repetition_penalty: p.repetition_penalty,
            seed: 0,
        });
        let dist = sampler.filtered_distribution(&case.logits, &case.history);
        assert_same_ids_and_close(&case.name, "p", &dist, &case.ids, &case.probs, 1e-6);
    }
}

#[test]
fn greedy_matches_torch_argmax() {
    let reference = transformers_outputs();
    for case in &reference.greedy {
        let mut sampler = sampler(SamplingParams {
            repetition_penalty: case.repetition_penalty,
            ..SamplingParams::default()
        });
        assert_eq!(
            sampler.sample(&case.logits, &case.history),
            case.id,
            "{}",
            case.name
        );
    }
}

#[test]
fn greedy_ties_take_the_first_index() {
    let mut sampler = sampler(SamplingParams::default());
    assert_eq!(sampler.sample(&[0.0, 3.0, 1.0, 3.0, 3.0], &[]), 1);
    // The penalty decides which of the tied ids is left on top.
    let mut sampler = sampler_with_penalty(2.0);
    assert_eq!(sampler.sample(&[0.0, 3.0, 1.0, 3.0, 3.0], &[1, 1]), 3);
}

fn sampler_with_penalty(repetition_penalty: f32) -> Sampler {
    sampler(SamplingParams {
        repetition_penalty,
        ..SamplingParams::default()
    })
}

#[test]
fn repetition_penalty_applies_once_per_id() {
    let sampler = sampler(SamplingParams {
        temperature: 1.0,
        repetition_penalty: 2.0,
        ..SamplingParams::default()
    });
    let logits = [2.0, -1.0, 0.5];
    let once = sampler.filtered_distribution(&logits, &[0, 1]);
    let repeated = sampler.filtered_distribution(&logits, &[0, 1, 0, 1, 1]);
    assert_eq!(once, repeated);
    // 2 / 2 = 1 and -1 * 2 = -2 against the untouched 0.5.
    let expected = [1.0f32, -2.0, 0.5].map(f32::exp);
    let total: f32 = expected.iter().sum();
    for (&(_, p), e) in once.iter().zip(expected) {
        assert!((p - e / total).abs() < 1e-6);
    }
}

#[test]
fn top_logprobs_match_torch_log_softmax() {
    let reference = transformers_outputs();
    for case in &reference.top_logprobs {
        let ours = top_logprobs(&case.logits, case.k);
        assert_same_ids_and_close(
            &case.name,
            "logprob",
            &ours,
            &case.ids,
            &case.logprobs,
            1e-5,
        );
    }
    assert!(top_logprobs(&[1.0, 2.0], 0).is_empty());
}

/// Logits shaped like a language model's over Qwen2's vocabulary: a few likely tokens, a long tail.
fn vocab_logits() -> Vec<f32> {
    (0..151_936u32)
        .map(|i| {
            let h = i.wrapping_mul(2_654_435_761) >> 8;
            (h % 10_000) as f32 / 1_000.0 - if i % 97 == 0 { 0.0 } else { 6.0 }
        })
        .collect()
}

#[test]
fn same_seed_same_tokens() {
    let logits = vocab_logits();
    let params = SamplingParams {
        temperature: 0.9,
        top_k: Some(200),
        top_p: Some(0.95),
        min_p: Some(0.01),
        repetition_penalty: 1.1,
        seed: 1234,
    };
    let draw = |params: SamplingParams| {
        let mut sampler = sampler(params);
        let mut history = vec![5, 97, 194];
        for _ in 0..64 {
            let id = sampler.sample(&logits, &history);
            history.push(id);
        }
        history
    };
    let first = draw(params.clone());
    assert_eq!(first, draw(params.clone()));
    assert_ne!(first, draw(SamplingParams { seed: 99, ..params }));
}

#[test]
fn samples_follow_the_filtered_distribution() {
    let logits = [1.0, 2.0, 0.5, 2.0, -1.0, 1.5];
    let mut sampler = sampler(SamplingParams {
        temperature: 1.0,
        top_k: Some(4),
        seed: 7,
        ..SamplingParams::default()
    });
    let dist = sampler.filtered_distribution(&logits, &[]);
    assert_eq!(
        dist.iter().map(|&(id, _)| id).collect::<Vec<_>>(),
        [0, 1, 3, 5]
    );
    let draws = 20_000;
    let mut counts = [0usize; 6];
    for _ in 0..draws {
        counts[sampler.sample(&logits, &[]) as usize] += 1;
    }
    assert_eq!(counts[2] + counts[4], 0, "filtered tokens were drawn");
    for (id, p) in dist {
        let freq = counts[id as usize] as f32 / draws as f32;
        assert!((freq - p).abs() < 0.015, "id {id}: frequency {freq}, p {p}");
    }
}

#[test]
fn top_p_over_the_whole_vocabulary_matches_a_full_sort() {
    // The chunked cut must agree with the plain rule: sort everything ascending, cumulate.
    let logits = vocab_logits();
    for top_p in [0.1, 0.5, 0.9, 0.999] {
        let sampler = sampler(SamplingParams {
            temperature: 1.0,
            top_p: Some(top_p),
            ..SamplingParams::default()
        });
        let ours: Vec<u32> = sampler
            .filtered_distribution(&logits, &[])
            .iter()
            .map(|&(id, _)| id)
            .collect();

        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = logits.iter().map(|&x| f64::from((x - max).exp())).sum();
        let inv = (1.0 / sum) as f32;
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        order.sort_by(|&a, &b| {
            logits[a as usize]
                .total_cmp(&logits[b as usize])
                .then(a.cmp(&b))
        });
        let threshold = (1.0 - f64::from(top_p)) as f32;
        let mut cumulative = 0.0f64;
        let cut = order
            .iter()
            .position(|&id| {
                cumulative += f64::from((logits[id as usize] - max).exp() * inv);
                cumulative as f32 > threshold
            })
            .unwrap();
        let mut expected = order[cut..].to_vec();
        expected.sort_unstable();
        assert_eq!(ours, expected, "top_p {top_p}");
    }
}

#[test]
fn invalid_params_are_rejected() {
    let breakers: [fn(&mut SamplingParams); 10] = [
        |p| p.temperature = -0.5,
        |p| p.temperature = f32::NAN,
        |p| p.top_k = Some(0),
        |p| p.top_p = Some(0.0),
        |p| p.top_p = Some(1.5),
        |p| p.min_p = Some(-0.1),
        |p| p.min_p = Some(1.1),
        |p| p.repetition_penalty = 0.0,
        |p| p.repetition_penalty = -1.0,
        |p| p.repetition_penalty = f32::NAN,
    ];
    for breaker in breakers {
        let mut params = SamplingParams::default();
        breaker(&mut params);
        let err = Sampler::new(params.clone()).err();
        assert!(
            matches!(err, Some(Error::InvalidArgument(_))),
            "{params:?} gave {err:?}"
        );
    }
    let ok = SamplingParams {
        temperature: 0.7,
        top_k: Some(1),
        top_p: Some(1.0),
        min_p: Some(0.0),
        repetition_penalty: 0.5,
        seed: 3,
    };
    assert!(ok.validate().is_ok());
}
