//! `imp train`: the Imp recipe's two stages, and `imp train merge`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::{Subcommand, ValueEnum};
use imp::adapter::Adapter;
use imp::config::AspectMode;
use imp_train::run::{self, Event, Resume, Stage, TrainOptions};
use imp_train::schedule::Scheduler;
use imp_train::step::Recompute;
use imp_train::trainable::LoraSpec;
use indicatif::{ProgressBar, ProgressStyle};

use crate::Dtype;

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct TrainCommand {
    #[command(subcommand)]
    command: Option<TrainSubcommand>,
    #[command(flatten)]
    args: TrainArgs,
}

#[derive(Subcommand)]
enum TrainSubcommand {
    /// Fold an adapter into a copy of its base model, in the base's own layout. Also takes the
    /// reference's output folder (`adapter_model.bin`, `non_lora_trainables.bin`).
    #[command(visible_alias = "import")]
    Merge(MergeArgs),
    /// Write this run's data and the MILVLG/imp DeepSpeed command line that trains it.
    ExportReference(Box<ExportArgs>),
}

#[derive(clap::Args)]
struct ExportArgs {
    #[command(flatten)]
    train: TrainArgs,
    /// GPUs the reference run uses (global batch = micro-batch x accumulation x GPUs).
    #[arg(long, default_value_t = 8)]
    gpus: usize,
}

#[derive(Clone, Copy, ValueEnum)]
enum Recipe {
    /// Stage 1: the projector alone on captions, lr 1e-3, global batch 256, 1 epoch.
    ImpStage1,
    /// Stage 2: LoRA r 256 on every language-model linear layer and lm_head, lr 2e-4, the
    /// projector at 2e-5, global batch 128, 2 epochs.
    ImpStage2,
}

#[derive(Clone, Copy, ValueEnum)]
enum StageArg {
    Projector,
    Lora,
}

#[derive(Clone, Copy, ValueEnum)]
enum AspectArg {
    /// Resize straight to the square (the stage-2 script's `--image_aspect_ratio square`).
    Square,
    /// Centre on a grey square first.
    Pad,
}

#[derive(Clone, Copy, ValueEnum)]
enum RecomputeArg {
    None,
    Layer,
}

#[derive(Clone, Copy, ValueEnum)]
enum SchedulerArg {
    Cosine,
    Linear,
    Constant,
}

/// Every value left out comes from `--recipe` (stage 2 when none is given).
#[derive(clap::Args)]
struct TrainArgs {
    /// The Hugging Face folder of the Imp model to train (dense weights).
    #[arg(long, required = true)]
    model: Option<PathBuf>,
    /// LLaVA-style .json or .jsonl: `id`, optional `image`, `conversations`.
    #[arg(long, required = true)]
    data: Option<PathBuf>,
    /// Folder the samples' `image` paths are relative to.
    #[arg(long, required = true)]
    image_folder: Option<PathBuf>,
    /// Run folder: log.jsonl, checkpoint-N/, and adapter/ or mm_projector.safetensors.
    #[arg(long, required = true)]
    out: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "imp-stage2")]
    recipe: Recipe,
    #[arg(long, value_enum)]
    stage: Option<StageArg>,
    #[arg(long)]
    lora_r: Option<usize>,
    #[arg(long)]
    lora_alpha: Option<f64>,
    #[arg(long)]
    lora_dropout: Option<f64>,
    /// Dropout on each block's attention and MLP outputs [default: the config's resid_pdrop,
    /// 0.1 for Phi-2, 0 for the others].
    #[arg(long)]
    resid_dropout: Option<f64>,
    /// `auto` (every linear layer of the language model) or leaf names, e.g. q_proj,v_proj.
    #[arg(long, default_value = "auto")]
    lora_targets: String,
    /// Leave lm_head without LoRA (the Imp recipe adapts it).
    #[arg(long)]
    no_lora_lm_head: bool,
    /// Start from this projector (stage 1's mm_projector.safetensors, or the reference's .bin).
    #[arg(long)]
    init_projector: Option<PathBuf>,
    /// Start from this PEFT adapter folder instead of a fresh LoRA.
    #[arg(long)]
    init_adapter: Option<PathBuf>,
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long)]
    projector_lr: Option<f64>,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Clip the global gradient norm (0: off, as the reference under DeepSpeed).
    #[arg(long, default_value_t = 0.0)]
    max_grad_norm: f64,
    #[arg(long)]
    epochs: Option<usize>,
    /// Stop after this many optimizer steps (the schedule spans them).
    #[arg(long)]
    max_steps: Option<usize>,
    #[arg(long)]
    micro_batch: Option<usize>,
    /// Samples per optimizer step: micro-batch x gradient accumulation.
    #[arg(long)]
    global_batch: Option<usize>,
    #[arg(long, default_value_t = 0.03)]
    warmup_ratio: f64,
    #[arg(long, value_enum, default_value = "cosine")]
    scheduler: SchedulerArg,
    #[arg(long, default_value_t = 3072)]
    max_len: usize,
    /// How images are made square (default: the model config's `image_aspect_ratio`).
    #[arg(long, value_enum)]
    aspect: Option<AspectArg>,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[arg(long, value_enum, default_value = "f32")]
    dtype: Dtype,
    /// cpu, or cuda:N with a build that has the `cuda` feature.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Write a resumable checkpoint every N optimizer steps (0: at the end only).
    #[arg(long, default_value_t = 0)]
    save_every: usize,
    /// `auto` (the newest checkpoint in --out) or a checkpoint folder.
    #[arg(long)]
    resume: Option<String>,
    /// Fail on a sample the reference would silently drop for a tokenization mismatch.
    #[arg(long)]
    strict_masks: bool,
    /// Each step only image or only text samples, longest first, as the reference's stage 2
    /// (on by default with the imp-stage2 recipe; `--group-by-modality false` turns it off).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    group_by_modality: Option<bool>,
    /// `layer`: keep one decoder layer's activations at a time and run each layer twice, for
    /// long sequences on small memory (LoRA dropout masks then differ between the passes).
    #[arg(long, value_enum, default_value = "none")]
    recompute: RecomputeArg,
    /// Encode the data and print token statistics, dropped samples, the step count and the
    /// memory the run needs, without loading weights or training.
    #[arg(long)]
    dry_run: bool,
}

#[derive(clap::Args)]
struct MergeArgs {
    /// The base model folder the adapter was trained on.
    #[arg(long)]
    model: PathBuf,
    /// The adapter folder (`RUN_DIR/adapter`).
    #[arg(long)]
    adapter: PathBuf,
    /// New folder for the merged model.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(command: TrainCommand) -> Result<()> {
    match command.command {
        Some(TrainSubcommand::Merge(args)) => merge(args),
        Some(TrainSubcommand::ExportReference(args)) => {
            let ExportArgs { train, gpus } = *args;
            let options = options(train)?;
            let out = options.out.clone();
            for path in imp_train::export::export_reference(&options, gpus, &out)? {
                eprintln!("wrote {}", path.display());
            }
            Ok(())
        }
        None => train(command.args),
    }
}

fn merge(args: MergeArgs) -> Result<()> {
    let adapter = Adapter::load(&args.adapter, &Device::Cpu)
        .with_context(|| format!("loading the adapter {}", args.adapter.display()))?;
    let report = imp_train::merge::merge(&args.model, &adapter, &args.out)?;
    eprintln!(
        "merged {} LoRA matrices and {} replaced tensors into {}",
        report.merged_matrices,
        report.replaced_tensors,
        args.out.display()
    );
    Ok(())
}

fn device(spec: &str) -> Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        _ => {
            let Some(index) = spec.strip_prefix("cuda:").and_then(|n| n.parse().ok()) else {
                bail!("--device {spec}: expected cpu or cuda:N");
            };
            Device::new_cuda(index).with_context(|| format!("--device {spec}"))
        }
    }
}

fn options(args: TrainArgs) -> Result<TrainOptions> {
    let stage1 = matches!(args.recipe, Recipe::ImpStage1);
    let stage = match args.stage {
        Some(StageArg::Projector) => Stage::Projector,
        Some(StageArg::Lora) => Stage::Lora,
        None if stage1 => Stage::Projector,
        None => Stage::Lora,
    };
    let (lr, micro, global, epochs) = if stage1 {
        (1e-3, 32, 256, 1)
    } else {
        (2e-4, 4, 128, 2)
    };
    let targets = match args.lora_targets.as_str() {
        "auto" => Vec::new(),
        list => list.split(',').map(|t| t.trim().to_owned()).collect(),
    };
    let resume = match args.resume.as_deref() {
        None => None,
        Some("auto") => Some(Resume::Auto),
        Some(dir) => Some(Resume::Dir(dir.into())),
    };
    let required =
        |value: Option<PathBuf>, flag: &str| value.with_context(|| format!("{flag} is required"));
    Ok(TrainOptions {
        model: required(args.model, "--model")?,
        data: required(args.data, "--data")?,
        image_folder: required(args.image_folder, "--image-folder")?,
        out: required(args.out, "--out")?,
        stage,
        lora: LoraSpec {
            r: args.lora_r.unwrap_or(256),
            alpha: args.lora_alpha.unwrap_or(256.0),
            dropout: args.lora_dropout.unwrap_or(0.05),
            targets,
            lm_head: !args.no_lora_lm_head,
        },
        init_projector: args.init_projector,
        init_adapter: args.init_adapter,
        lr: args.lr.unwrap_or(lr),
        projector_lr: args.projector_lr.unwrap_or(if stage1 { lr } else { 2e-5 }),
        weight_decay: args.weight_decay,
        max_grad_norm: args.max_grad_norm,
        epochs: args.epochs.unwrap_or(epochs),
        max_steps: args.max_steps,
        micro_batch: args.micro_batch.unwrap_or(micro),
        global_batch: args.global_batch.unwrap_or(global),
        warmup_ratio: args.warmup_ratio,
        scheduler: match args.scheduler {
            SchedulerArg::Cosine => Scheduler::Cosine,
            SchedulerArg::Linear => Scheduler::Linear,
            SchedulerArg::Constant => Scheduler::Constant,
        },
        max_len: args.max_len,
        aspect: args.aspect.map(|a| match a {
            AspectArg::Square => AspectMode::Squash,
            AspectArg::Pad => AspectMode::Pad,
        }),
        seed: args.seed,
        dtype: args.dtype.into(),
        device: device(&args.device)?,
        save_every: args.save_every,
        resume,
        strict_masks: args.strict_masks,
        group_by_modality: args.group_by_modality.unwrap_or(!stage1),
        recompute: match args.recompute {
            RecomputeArg::None => Recompute::None,
            RecomputeArg::Layer => Recompute::Layer,
        },
        residual_dropout: args.resid_dropout,
    })
}

fn dry_run(options: &TrainOptions) -> Result<()> {
    let report = run::dry_run(options)?;
    let data = &report.data;
    println!(
        "{} samples ({} with an image): {} dropped by the reference's mismatch rule, {} without \
         loss tokens; tokens per sample: mean {:.0}, max {}",
        data.samples,
        data.image_samples,
        data.mismatched,
        data.without_loss,
        data.mean_tokens,
        data.max_tokens
    );
    println!(
        "{} optimizer steps ({} per epoch, {} warmup)",
        data.total_steps, data.steps_per_epoch, data.warmup_steps
    );
    let gb = |bytes: usize| bytes as f64 / 1e9;
    println!(
        "memory estimate at {:?}, recompute {:?}, one sample in flight ({:.1} M trainable \
         parameters):",
        options.dtype,
        options.recompute,
        report.memory[0].trainable_parameters as f64 / 1e6
    );
    println!("| tokens | frozen weights | trainables + AdamW | activations | total | fits 24 / 40 / 80 GB |");
    println!("|---|---|---|---|---|---|");
    for m in &report.memory {
        let total = gb(m.total_bytes());
        let fits = [24.0, 40.0, 80.0].map(|cap| if total <= cap { "yes" } else { "no" });
        println!(
            "| {} | {:.2} GB | {:.2} GB | {:.2} GB | {total:.2} GB | {} |",
            m.tokens,
            gb(m.frozen_bytes),
            gb(m.trainable_bytes),
            gb(m.activation_bytes),
            fits.join(" / ")
        );
    }
    Ok(())
}

fn train(args: TrainArgs) -> Result<()> {
    let dry = args.dry_run;
    let options = options(args)?;
    if dry {
        return dry_run(&options);
    }
    let bar = ProgressBar::hidden();
    let outputs = run::train(&options, &mut |event| match event {
        Event::Prepared(report) => {
            eprintln!(
                "{} samples ({} with an image), {} dropped by the reference's mismatch rule, \
                 {} without loss tokens; tokens per sample: mean {:.0}, max {}",
                report.samples,
                report.image_samples,
                report.mismatched,
                report.without_loss,
                report.mean_tokens,
                report.max_tokens
            );
            eprintln!(
                "{} optimizer steps ({} per epoch, {} warmup){}",
                report.total_steps,
                report.steps_per_epoch,
                report.warmup_steps,
                if report.start_step > 0 {
                    format!(", resuming after step {}", report.start_step)
                } else {
                    String::new()
                }
            );
            bar.set_length(report.total_steps as u64);
            bar.set_position(report.start_step as u64);
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]",
                )
                .expect("valid template"),
            );
        }
        Event::Step(log) => {
            bar.set_message(format!(
                "loss {:.4}  lr {:.2e}  {:.0} tok/s",
                log.loss, log.lr, log.tokens_per_second
            ));
            bar.set_position(log.step as u64);
        }
        Event::Saved(path) => bar.println(format!("saved {}", path.display())),
    })?;
    bar.finish();
    eprintln!("done: {}", outputs.display());
    Ok(())
}
