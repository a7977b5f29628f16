//! Learning-rate schedules against transformers' (`schedules.json`).

use imp_train::schedule::{warmup_steps, Scheduler};
use serde::Deserialize;

use crate::support::fixture_dir;

#[derive(Deserialize)]
struct Schedules {
    schedules: Vec<Case>,
    warmup_steps: Vec<Warmup>,
}

#[derive(Deserialize)]
struct Case {
    total_steps: usize,
    warmup_steps: usize,
    cosine: Vec<f64>,
    linear: Vec<f64>,
    constant: Vec<f64>,
}

#[derive(Deserialize)]
struct Warmup {
    total_steps: usize,
    warmup_ratio: f64,
    warmup_steps: usize,
}

fn load() -> Schedules {
    let path = fixture_dir("schedules.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn multipliers_equal_transformers() {
    for case in load().schedules {
        for (scheduler, want) in [
            (Scheduler::Cosine, &case.cosine),
            (Scheduler::Linear, &case.linear),
            (Scheduler::Constant, &case.constant),
        ] {
            assert_eq!(want.len(), case.total_steps + 1);
            for (step, &want) in want.iter().enumerate() {
                let got = scheduler.multiplier(step, case.warmup_steps, case.total_steps);
                assert!(
                    (got - want).abs() < 1e-12,
                    "{scheduler} step {step} of {} (warmup {}): {got}, transformers {want}",
                    case.total_steps,
                    case.warmup_steps
                );
            }
        }
    }
}

#[test]
fn warmup_steps_round_up_as_training_arguments() {
    for case in load().warmup_steps {
        assert_eq!(
            warmup_steps(case.total_steps, case.warmup_ratio),
            case.warmup_steps,
            "{} steps x {}",
            case.total_steps,
            case.warmup_ratio
        );
    }
}
