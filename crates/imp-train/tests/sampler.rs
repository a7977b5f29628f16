//! The modality-grouped order: the reference's invariants, checked over many seeds and sizes.

use imp_train::sampler::step_plan;

/// Sample `i` has an image when `i % 3 != 0`, and `i % 7 + 1` words.
fn lengths(samples: usize) -> Vec<i64> {
    (0..samples)
        .map(|i| {
            let words = (i % 7 + 1) as i64;
            if i % 3 == 0 {
                -words
            } else {
                words
            }
        })
        .collect()
}

#[test]
fn grouped_steps_hold_one_modality_longest_first_and_every_sample_once() {
    for (samples, micro, accumulation) in [(50, 2, 4), (17, 1, 3), (8, 4, 2), (3, 1, 1)] {
        let lengths = lengths(samples);
        for seed in 0..20 {
            let plan = step_plan(samples, Some(&lengths), 1, micro, accumulation, seed);
            let mut seen: Vec<usize> = plan.iter().flatten().flatten().copied().collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..samples).collect::<Vec<_>>(), "seed {seed}");
            // Full steps: one modality, longest first; but the two modalities' leftovers,
            // together up to two steps' worth, come last and mixed, as in the reference.
            let full = micro * accumulation;
            for step in &plan[..plan.len().saturating_sub(2)] {
                let ids: Vec<usize> = step.iter().flatten().copied().collect();
                if ids.len() < full {
                    continue;
                }
                let image = lengths[ids[0]] > 0;
                assert!(
                    ids.iter().all(|&i| (lengths[i] > 0) == image),
                    "mixed step {ids:?}"
                );
                assert!(
                    ids.windows(2)
                        .all(|w| lengths[w[0]].abs() >= lengths[w[1]].abs()),
                    "not longest first: {ids:?}"
                );
            }
            assert_eq!(
                plan,
                step_plan(samples, Some(&lengths), 1, micro, accumulation, seed),
                "the order is a function of the seed"
            );
        }
    }
}

#[test]
fn plain_order_is_a_seeded_permutation_per_epoch() {
    let plan = step_plan(10, None, 2, 3, 1, 7);
    let epoch: Vec<usize> = plan[..4].iter().flatten().flatten().copied().collect();
    let mut sorted = epoch.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..10).collect::<Vec<_>>());
    let second: Vec<usize> = plan[4..].iter().flatten().flatten().copied().collect();
    assert_ne!(epoch, second, "each epoch is shuffled anew");
}
