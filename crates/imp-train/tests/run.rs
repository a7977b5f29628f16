//! Whole runs through `imp_train::run::train` on the tiny fixture models: the answer a LoRA
//! was trained on comes back from the unmerged adapter and from the merged checkpoint, resume
//! continues exactly, and bad set-ups are refused with a message that names the problem.

use std::path::Path;
use std::sync::Arc;

use imp::adapter::Adapter;
use imp::{generate, GenerationOptions, ImpModel, LoadOptions, Prompt};
use imp_train::run::{self, Resume, Stage, TrainOptions, ADAPTER_DIR, LOG_FILE};
use imp_train::schedule::Scheduler;

use crate::support::{image_folder, model_dir, train_options};

const MODEL: &str = "imp-v1.5-3b-phi2";
const QUESTION: &str = "What is in the cup?";
const ANSWER: &str = "Coffee with milk foam.";

/// One image question, repeated: the data a LoRA memorises in a few dozen steps.
fn one_question(dir: &Path) -> TrainOptions {
    let data = dir.join("data.json");
    let sample = serde_json::json!([{
        "id": "coffee",
        "image": "skimage_coffee.png",
        "conversations": [
            {"from": "human", "value": format!("<image>\n{QUESTION}")},
            {"from": "gpt", "value": ANSWER},
        ],
    }]);
    std::fs::write(&data, sample.to_string()).unwrap();
    let mut options = train_options(MODEL);
    options.data = data;
    options.out = dir.join("run");
    options.lora.r = 8;
    options.lora.alpha = 16.0;
    options.lr = 1e-2;
    options.projector_lr = 1e-3;
    options.epochs = 40;
    options.scheduler = Scheduler::Constant;
    options
}

fn answer(model: &ImpModel) -> String {
    let image = imp::load_rgb(&image_folder().join("skimage_coffee.png")).unwrap();
    let options = GenerationOptions {
        max_new_tokens: 16,
        ..GenerationOptions::default()
    };
    generate(
        model,
        &Prompt::from_cli(QUESTION),
        &[image],
        &options,
        &mut |_| {},
    )
    .unwrap()
    .text
}

#[test]
fn a_trained_lora_answers_with_the_trained_answer_unmerged_and_merged() {
    let dir = tempfile::tempdir().unwrap();
    let options = one_question(dir.path());
    let base = ImpModel::load(&model_dir(MODEL), &LoadOptions::default()).unwrap();
    assert_ne!(
        answer(&base),
        ANSWER,
        "the random model must not know it already"
    );

    let mut losses = Vec::new();
    let adapter_dir = run::train(&options, &mut |event| {
        if let run::Event::Step(log) = event {
            losses.push(log.loss);
        }
    })
    .unwrap();
    assert_eq!(adapter_dir, options.out.join(ADAPTER_DIR));
    assert!(
        losses.last().unwrap() < &(losses[0] / 10.0),
        "loss {losses:?}"
    );
    let logged = std::fs::read_to_string(options.out.join(LOG_FILE)).unwrap();
    assert_eq!(logged.lines().count(), losses.len());

    let adapter = Adapter::load(&adapter_dir, &candle_core::Device::Cpu).unwrap();
    let with_lora = ImpModel::load(
        &model_dir(MODEL),
        &LoadOptions {
            adapter: Some(Arc::new(adapter.clone())),
            ..LoadOptions::default()
        },
    )
    .unwrap();
    assert_eq!(answer(&with_lora), ANSWER);

    let merged_dir = dir.path().join("merged");
    imp_train::merge::merge(&model_dir(MODEL), &adapter, &merged_dir).unwrap();
    let merged = ImpModel::load(&merged_dir, &LoadOptions::default()).unwrap();
    assert_eq!(answer(&merged), ANSWER);
}

#[test]
fn resuming_from_a_checkpoint_equals_a_straight_run() {
    let dir = tempfile::tempdir().unwrap();
    let mut straight = one_question(dir.path());
    straight.epochs = 4;
    straight.warmup_ratio = 0.25;
    straight.scheduler = Scheduler::Cosine;
    let straight_dir = run::train(&straight, &mut |_| {}).unwrap();

    let mut first_half = straight.clone();
    first_half.out = dir.path().join("resumed");
    first_half.save_every = 2;
    first_half.max_steps = Some(4);
    // Interrupted after step 2: drop the later checkpoint and outputs to start again from it.
    run::train(&first_half, &mut |_| {}).unwrap();
    std::fs::remove_dir_all(first_half.out.join("checkpoint-4")).unwrap();
    std::fs::remove_dir_all(first_half.out.join(ADAPTER_DIR)).unwrap();
    let mut second_half = first_half.clone();
    second_half.resume = Some(Resume::Auto);
    let mut resumed_at = None;
    let resumed_dir = run::train(&second_half, &mut |event| {
        if let run::Event::Prepared(report) = event {
            resumed_at = Some(report.start_step);
        }
    })
    .unwrap();
    assert_eq!(resumed_at, Some(2));

    let read = |dir: &Path| {
        candle_core::safetensors::load(
            dir.join("adapter_model.safetensors"),
            &candle_core::Device::Cpu,
        )
        .unwrap()
    };
    let (a, b) = (read(&straight_dir), read(&resumed_dir));
    assert_eq!(a.len(), b.len());
    for (key, tensor) in &a {
        let other = &b[key];
        let a: Vec<f32> = tensor.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = other.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(a, b, "{key} differs after resuming");
    }
}

/// A change that makes the options bad.
type Spoil = Box<dyn Fn(&mut TrainOptions)>;

/// Each bad set-up and a piece of the message it must give.
#[test]
fn bad_setups_are_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let base = one_question(dir.path());
    std::fs::create_dir_all(dir.path().join("occupied")).unwrap();
    std::fs::write(dir.path().join("occupied/notes.txt"), "mine").unwrap();
    let cases: Vec<(&str, Spoil, &str)> = vec![
        (
            "occupied output folder",
            Box::new(|o| o.out = o.out.with_file_name("occupied")),
            "already holds files",
        ),
        (
            "unknown LoRA target",
            Box::new(|o| o.lora.targets = vec!["w_pack".into()]),
            "names no linear layer",
        ),
        (
            "global batch not a multiple",
            Box::new(|o| {
                o.micro_batch = 2;
                o.global_batch = 3;
            }),
            "not a multiple of --micro-batch",
        ),
        (
            "stage 1 on a text-only sample",
            Box::new(|o| {
                o.stage = Stage::Projector;
                o.data = o.data.with_file_name("text.json");
            }),
            "has no image",
        ),
        (
            "missing image folder",
            Box::new(|o| o.image_folder = o.image_folder.join("nowhere")),
            "is not a folder",
        ),
        (
            "output folder a file",
            Box::new(|o| o.out = o.out.with_file_name("occupied").join("notes.txt")),
            "is a regular file",
        ),
        (
            "output inside the model",
            Box::new(|o| o.out = o.model.join("run")),
            "or inside it",
        ),
    ];
    std::fs::write(
        dir.path().join("text.json"),
        r#"[{"id": "t", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]}]"#,
    )
    .unwrap();
    for (what, change, expected) in cases {
        let mut options = base.clone();
        options.out = dir.path().join(format!("run-{}", what.replace(' ', "-")));
        change(&mut options);
        let error = run::train(&options, &mut |_| {})
            .expect_err(what)
            .to_string();
        assert!(error.contains(expected), "{what}: {error}");
    }
    assert_eq!(
        std::fs::read_to_string(dir.path().join("occupied/notes.txt")).unwrap(),
        "mine",
        "an occupied folder is left as it was"
    );
}

#[test]
fn stage_one_trains_the_projector_that_stage_two_starts_from() {
    let dir = tempfile::tempdir().unwrap();
    let mut stage1 = one_question(dir.path());
    stage1.stage = Stage::Projector;
    stage1.out = dir.path().join("stage1");
    stage1.epochs = 5;
    let mut losses = Vec::new();
    let projector = run::train(&stage1, &mut |event| {
        if let run::Event::Step(log) = event {
            losses.push(log.loss);
        }
    })
    .unwrap();
    assert_eq!(projector, stage1.out.join(run::PROJECTOR_FILE));
    assert!(losses.last().unwrap() < &losses[0], "loss {losses:?}");
    let trained = candle_core::safetensors::load(&projector, &candle_core::Device::Cpu).unwrap();
    assert_eq!(
        trained.len(),
        4,
        "both projector layers' weights and biases"
    );

    let mut stage2 = one_question(dir.path());
    stage2.out = dir.path().join("stage2");
    stage2.init_projector = Some(projector);
    stage2.max_steps = Some(1);
    stage2.lr = 0.0;
    stage2.projector_lr = 0.0;
    let adapter = run::train(&stage2, &mut |_| {}).unwrap();
    // At lr 0 the projector the adapter saves is the one stage 1 trained.
    let saved = Adapter::load(&adapter, &candle_core::Device::Cpu).unwrap();
    for (name, tensor) in &trained {
        let saved = saved
            .replacement(name)
            .expect("projector in non_lora_trainables");
        let a: Vec<f32> = tensor.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = saved.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(a, b, "{name}");
    }
}

#[test]
fn export_reference_writes_the_same_samples_and_the_recipe() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = one_question(dir.path());
    options.global_batch = 16;
    options.micro_batch = 2;
    options.warmup_ratio = 0.03;
    let out = dir.path().join("reference");
    let files = imp_train::export::export_reference(&options, 4, &out).unwrap();
    assert_eq!(files, [out.join("data.json"), out.join("train.sh")]);
    let original = imp_train::data::read(&options.data).unwrap();
    let exported = imp_train::data::read(&out.join("data.json")).unwrap();
    assert_eq!(original, exported);
    let script = std::fs::read_to_string(out.join("train.sh")).unwrap();
    for expected in [
        "deepspeed --num_gpus 4",
        "--version phi2",
        "--lora_r 8",
        "--per_device_train_batch_size 2",
        "--gradient_accumulation_steps 2",
        "--lr_scheduler_type constant_with_warmup",
        "--learning_rate 0.01",
    ] {
        assert!(script.contains(expected), "{expected} missing:\n{script}");
    }
    let error = imp_train::export::export_reference(&options, 3, &dir.path().join("odd"))
        .expect_err("16 samples do not split over 2 x 3");
    assert!(error.to_string().contains("not a multiple"), "{error}");
}
