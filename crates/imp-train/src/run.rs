//! A training run from start to saved adapter: the model loaded with its trainables, the data
//! encoded and checked, the step loop with images prepared on a worker thread ahead of the
//! step, per-step logs, checkpoints that resume exactly, and the outputs the reference writes.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use imp::checkpoint;
use imp::config::ImpConfig;
use imp::names::{NamingStyle, Source};
use imp::{ImpModel, LoadOptions};
use serde::{Deserialize, Serialize};

use crate::data::{self, Sample};
use crate::loss::Example;
use crate::optim::{AdamW, AdamWConfig, Param, ParamGroup};
use crate::schedule::{warmup_steps, Scheduler};
use crate::step::{accumulate, clip_factor, step_seed};
use crate::template::{encode_with_limit, Encoded, Template};
use crate::trainable::{Kind, LoraSpec, Trainables};
use crate::{Error, Result};

/// What a run trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Stage 1: the projector alone, on captions in the plain template.
    Projector,
    /// Stage 2: LoRA on the language model and the whole projector, in the chat template.
    Lora,
}

#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub model: PathBuf,
    pub data: PathBuf,
    pub image_folder: PathBuf,
    pub out: PathBuf,
    pub stage: Stage,
    pub lora: LoraSpec,
    /// Starting projector (`mm_projector.*` of stage 1) instead of the checkpoint's.
    pub init_projector: Option<PathBuf>,
    /// Starting LoRA (and projector) instead of PEFT's fresh init.
    pub init_adapter: Option<PathBuf>,
    pub lr: f64,
    pub projector_lr: f64,
    pub weight_decay: f64,
    /// Global gradient-norm clip; 0 is off (the reference under DeepSpeed clips nothing).
    pub max_grad_norm: f64,
    pub epochs: usize,
    pub max_steps: Option<usize>,
    pub micro_batch: usize,
    pub global_batch: usize,
    pub warmup_ratio: f64,
    pub scheduler: Scheduler,
    /// Longest spliced sequence; longer ones are cut, as the reference cuts them.
    pub max_len: usize,
    /// How images are made square; `None`: the config's `image_aspect_ratio`.
    pub aspect: Option<imp::config::AspectMode>,
    pub seed: u64,
    pub dtype: DType,
    pub device: Device,
    /// Write a checkpoint every this many optimizer steps (0: only at the end).
    pub save_every: usize,
    pub resume: Option<Resume>,
    /// Fail on a sample the reference would silently drop for a tokenization mismatch.
    pub strict_masks: bool,
    /// Each step only image or only text samples, longest first (the reference's stage 2).
    pub group_by_modality: bool,
    pub recompute: crate::step::Recompute,
    /// Dropout on each block's attention and MLP outputs; `None`: the model config's
    /// `resid_pdrop` (Phi-2: 0.1), as the reference trains in both stages.
    pub residual_dropout: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// The newest `checkpoint-N` in the run folder, or a fresh start when there is none.
    Auto,
    Dir(PathBuf),
}

/// What the run reports as it goes.
#[derive(Debug, Clone)]
pub enum Event {
    Prepared(DataReport),
    Step(StepLog),
    Saved(PathBuf),
}

/// The data as the run sees it, before the first step.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DataReport {
    pub samples: usize,
    pub image_samples: usize,
    /// Samples whose every label the reference's mismatch rule masks.
    pub mismatched: usize,
    /// Samples with no label token left after the cut at `max_len`.
    pub without_loss: usize,
    pub max_tokens: usize,
    pub mean_tokens: f64,
    pub steps_per_epoch: usize,
    pub total_steps: usize,
    pub warmup_steps: usize,
    pub start_step: usize,
}

/// One line of `log.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepLog {
    pub step: usize,
    pub total_steps: usize,
    pub epoch: f64,
    pub loss: f64,
    pub lr: f64,
    pub projector_lr: f64,
    pub grad_norm: f64,
    pub tokens: usize,
    pub tokens_per_second: f64,
    pub seconds: f64,
    /// Images that could not be read so far; their samples were skipped.
    pub skipped_images: usize,
}

/// What `state.json` of a checkpoint holds besides the tensors.
#[derive(Debug, Serialize, Deserialize)]
struct CheckpointState {
    step: usize,
    seed: u64,
    stage: Stage,
    skipped_images: usize,
}

const TRAINABLES_FILE: &str = "trainables.safetensors";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const STATE_FILE: &str = "state.json";
pub const LOG_FILE: &str = "log.jsonl";
pub const PLOT_FILE: &str = "loss.svg";
pub const ADAPTER_DIR: &str = "adapter";
pub const PROJECTOR_FILE: &str = "mm_projector.safetensors";

/// The model with its trainables, ready to compute losses.
pub struct TrainModel {
    pub model: ImpModel,
    pub trainables: Trainables,
    pub style: NamingStyle,
}

impl TrainModel {
    /// Loads `options.model` dense, in `options.dtype`, with the trainables of the stage.
    pub fn load(options: &TrainOptions) -> Result<Self> {
        let source = checkpoint::open(&options.model)?;
        if let Some(plan) = source.stored_quantization() {
            return Err(Error::InvalidArgument(format!(
                "{} is quantized ({plan}); training needs the dense Hugging Face folder \
                 (LoRA on a quantized base is not supported)",
                options.model.display()
            )));
        }
        let config = ImpConfig::load(&source.config_files()?, source.as_ref())?;
        let style = config.style;
        let device = &options.device;
        let mut trainables = match (&options.init_adapter, options.stage) {
            (Some(dir), Stage::Lora) => {
                let adapter = imp::adapter::Adapter::load(dir, device)?;
                Trainables::from_adapter(&adapter, device)?
            }
            (None, Stage::Lora) => Trainables::new(
                source.as_ref(),
                style,
                config.decoder.num_layers,
                Some(&options.lora),
                options.seed,
                device,
            )?,
            (_, Stage::Projector) => {
                Trainables::new(source.as_ref(), style, 0, None, options.seed, device)?
            }
        };
        let init_projector = match &options.init_projector {
            Some(path) => read_projector(path, style, device)?,
            None => HashMap::new(),
        };
        for (name, shape) in projector_tensors(style, &config) {
            let tensor = match init_projector.get(&name) {
                Some(tensor) => tensor.clone(),
                None if trainables_has(&trainables, &name) => continue,
                None => source.load(&Source::Tensor(name.clone()), &shape, DType::F32, device)?,
            };
            if tensor.dims() != shape {
                return Err(Error::InvalidArgument(format!(
                    "the initial projector's `{name}` has shape {:?}, the model needs {shape:?}",
                    tensor.dims()
                )));
            }
            trainables.add_projector(&name, &tensor)?;
        }
        let dropout = match options.stage {
            Stage::Lora => options.lora.dropout as f32,
            Stage::Projector => 0.0,
        };
        let load = LoadOptions {
            dtype: options.dtype,
            device: device.clone(),
            adapter: Some(Arc::new(trainables.adapter(dropout)?)),
            aspect: options.aspect,
            residual_dropout: options
                .residual_dropout
                .unwrap_or(config.decoder.residual_dropout) as f32,
            ..LoadOptions::default()
        };
        let model = ImpModel::from_source(source.as_ref(), &load)?;
        Ok(Self {
            model,
            trainables,
            style,
        })
    }

    /// The template of the stage and family.
    pub fn template(&self, stage: Stage) -> Template {
        match stage {
            Stage::Projector => Template::Plain,
            Stage::Lora => Template::for_family(self.model.config().decoder.family),
        }
    }

    /// An AdamW over the trainables in the reference's groups: LoRA at `lr`, the projector at
    /// `projector_lr`, biases without weight decay.
    pub fn optimizer(&self, lr: f64, projector_lr: f64, weight_decay: f64) -> Result<AdamW> {
        let mut groups = vec![
            ParamGroup {
                name: "lora".into(),
                lr,
                weight_decay,
                params: Vec::new(),
            },
            ParamGroup {
                name: "projector".into(),
                lr: projector_lr,
                weight_decay,
                params: Vec::new(),
            },
            ParamGroup {
                name: "projector_bias".into(),
                lr: projector_lr,
                weight_decay: 0.0,
                params: Vec::new(),
            },
        ];
        for trainable in &self.trainables.params {
            let group = match trainable.kind {
                Kind::Lora => 0,
                Kind::ProjectorWeight => 1,
                Kind::ProjectorBias => 2,
            };
            groups[group]
                .params
                .push(Param::new(trainable.key.clone(), trainable.var.clone())?);
        }
        groups.retain(|g| !g.params.is_empty());
        Ok(AdamW::new(AdamWConfig::default(), groups))
    }

    /// Ids and labels of a sample in `template`.
    pub fn encode(&self, template: Template, sample: &Sample, max_len: usize) -> Result<Encoded> {
        encode_with_limit(
            template,
            self.model.tokenizer(),
            sample,
            self.model.image_token_id(),
            self.model.bos_token_id(),
            Some(max_len),
        )
    }

    /// The sample ready for the model, its image read from `image_folder` and preprocessed.
    pub fn example(
        &self,
        sample: &Sample,
        encoded: &Encoded,
        image_folder: &Path,
    ) -> Result<Example> {
        let pixels = match &sample.image {
            Some(relative) => {
                let image = imp::load_rgb(&image_folder.join(relative))?;
                Some(
                    self.model
                        .preprocessor()
                        .preprocess(&image, self.model.device())?,
                )
            }
            None => None,
        };
        Ok(Example {
            ids: encoded.input_ids.clone(),
            labels: encoded.labels.clone(),
            pixels,
        })
    }

    /// Writes the trained weights as the reference does: the PEFT adapter folder with
    /// `non_lora_trainables.safetensors` (stage 2), or `mm_projector.safetensors` (stage 1).
    pub fn save_outputs(&self, options: &TrainOptions) -> Result<PathBuf> {
        match options.stage {
            Stage::Lora => {
                let dir = options.out.join(ADAPTER_DIR);
                let mut adapter = self.trainables.adapter(0.0)?;
                adapter.set_base_model(options.model.display().to_string());
                adapter.save(&dir)?;
                Ok(dir)
            }
            Stage::Projector => {
                let path = options.out.join(PROJECTOR_FILE);
                let tensors = self
                    .trainables
                    .params
                    .iter()
                    .filter_map(|p| {
                        let name = p.key.strip_prefix("base_model.model.")?;
                        Some((name.to_owned(), p.var.as_tensor().clone()))
                    })
                    .collect();
                imp::adapter::write_safetensors(&tensors, &path)?;
                Ok(path)
            }
        }
    }
}

fn trainables_has(trainables: &Trainables, name: &str) -> bool {
    let key = format!("base_model.model.{name}");
    trainables.params.iter().any(|p| p.key == key)
}

/// The projector's stored names and shapes.
fn projector_tensors(style: NamingStyle, config: &ImpConfig) -> Vec<(String, Vec<usize>)> {
    let names = style.projector();
    let (input, output) = (config.projector.input_size, config.projector.output_size);
    let mut tensors = Vec::new();
    for (linear, width) in [(names.fc1, input), (names.fc2, output)] {
        if let Source::Tensor(weight) = linear.weight {
            tensors.push((weight, vec![output, width]));
        }
        if let Some(Source::Tensor(bias)) = linear.bias {
            tensors.push((bias, vec![output]));
        }
    }
    tensors
}

/// A projector file of stage 1 (ours or the reference's `mm_projector.bin`), keyed by the
/// checkpoint's names whatever prefix it was saved with.
fn read_projector(
    path: &Path,
    style: NamingStyle,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let is_pickle = path.extension().is_some_and(|e| e == "bin");
    let tensors: Vec<(String, Tensor)> = if is_pickle {
        // The zip reader opens the file itself; this refuses a FIFO or device first.
        imp::files::open_regular(path)?;
        candle_core::pickle::read_all(path)
            .map_err(|e| data_error(path, format!("not a readable torch pickle: {e}")))?
    } else {
        candle_core::safetensors::load_buffer(&imp::files::map(path)?, device)
            .map_err(|e| data_error(path, format!("not a readable safetensors file: {e}")))?
            .into_iter()
            .collect()
    };
    let prefix = style.projector_prefix();
    let suffix_of = |key: &str| key.find("mm_projector.").map(|i| key[i + 13..].to_owned());
    let mut projector = HashMap::new();
    for (key, tensor) in tensors {
        let suffix = suffix_of(&key).ok_or_else(|| {
            data_error(
                path,
                format!("`{key}` is not a projector tensor (mm_projector.*)"),
            )
        })?;
        projector.insert(
            format!("{prefix}{suffix}"),
            tensor.to_device(device)?.to_dtype(DType::F32)?,
        );
    }
    Ok(projector)
}

fn data_error(path: &Path, message: impl Into<String>) -> Error {
    Error::Data {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// The run's steps (`--max-steps` applied), with their counts and warmup in `report`.
fn planned_steps(
    options: &TrainOptions,
    samples: &[Sample],
    report: &mut DataReport,
) -> Vec<Vec<Vec<usize>>> {
    let accumulation = options.global_batch / options.micro_batch;
    let lengths: Option<Vec<i64>> = options.group_by_modality.then(|| {
        samples
            .iter()
            .map(crate::sampler::modality_length)
            .collect()
    });
    let mut plan = crate::sampler::step_plan(
        samples.len(),
        lengths.as_deref(),
        options.epochs,
        options.micro_batch,
        accumulation,
        options.seed,
    );
    report.steps_per_epoch = plan.len() / options.epochs;
    if let Some(max) = options.max_steps {
        plan.truncate(max);
    }
    report.total_steps = plan.len();
    report.warmup_steps = warmup_steps(plan.len(), options.warmup_ratio);
    plan
}

/// Trains as `options` say, reporting through `on_event`; returns the path of the outputs.
pub fn train(options: &TrainOptions, on_event: &mut dyn FnMut(Event)) -> Result<PathBuf> {
    check_options(options)?;
    let resume_from = prepare_run_dir(options)?;
    let run = TrainModel::load(options)?;
    let template = run.template(options.stage);
    let samples = data::read(&options.data)?;
    let (encoded, mut report) = encode_samples(
        options,
        &samples,
        template,
        &Vocabulary {
            tokenizer: run.model.tokenizer(),
            image_token: run.model.image_token_id(),
            bos: run.model.bos_token_id(),
            image_rows: run.model.image_tokens(),
        },
    )?;
    let plan = planned_steps(options, &samples, &mut report);
    let total = plan.len();
    let mut optimizer = run.optimizer(options.lr, options.projector_lr, options.weight_decay)?;
    let mut start = 0;
    let mut skipped_images = 0;
    if let Some(dir) = resume_from {
        let state = restore_checkpoint(&dir, &run, &mut optimizer)?;
        if state.seed != options.seed || state.stage != options.stage {
            return Err(Error::InvalidArgument(format!(
                "{} was written by a run with seed {} and stage {:?}; resume with the same",
                dir.display(),
                state.seed,
                state.stage
            )));
        }
        start = state.step;
        skipped_images = state.skipped_images;
    }
    report.start_step = start;
    on_event(Event::Prepared(report.clone()));

    let mut log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(options.out.join(LOG_FILE))
        .map_err(|e| io_error(&options.out.join(LOG_FILE), e))?;
    let steps_per_epoch = report.steps_per_epoch.max(1);
    let (sender, receiver) = mpsc::sync_channel::<Result<(Vec<Vec<Example>>, usize)>>(2);
    std::thread::scope(|scope| -> Result<()> {
        // Reads and preprocesses the images of the next steps while this step computes.
        let producer = scope.spawn(|| {
            for step in &plan[start..] {
                let mut skipped = 0;
                let micro_batches = step
                    .iter()
                    .map(|micro| {
                        micro
                            .iter()
                            .filter_map(|&i| {
                                match run.example(&samples[i], &encoded[i], &options.image_folder) {
                                    Ok(example) => Some(example),
                                    Err(error) => {
                                        tracing::warn!(
                                            "skipping sample {i} (id {:?}): {error}",
                                            samples[i].id
                                        );
                                        skipped += 1;
                                        None
                                    }
                                }
                            })
                            .collect()
                    })
                    .collect();
                if sender.send(Ok((micro_batches, skipped))).is_err() {
                    return;
                }
            }
        });
        for (step, received) in (start..total).zip(receiver.iter()) {
            let (micro_batches, skipped) = received?;
            skipped_images += skipped;
            let began = Instant::now();
            let multiplier = options
                .scheduler
                .multiplier(step, report.warmup_steps, total);
            let mut gradients = accumulate(
                &run.model,
                &run.trainables,
                &micro_batches,
                options.max_len,
                options.recompute,
                step_seed(options.seed, step),
            )?;
            let (grad_norm, factor) = clip_factor(&gradients.grads, options.max_grad_norm)?;
            if !grad_norm.is_finite() || !gradients.loss.is_finite() {
                return Err(Error::InvalidArgument(format!(
                    "step {}: the loss ({}) or gradient norm ({grad_norm}) is not finite; \
                     lower the learning rate or train in f32",
                    step + 1,
                    gradients.loss
                )));
            }
            if factor < 1.0 {
                for grad in gradients.grads.values_mut() {
                    *grad = (&*grad * factor)?;
                }
            }
            optimizer.step(&gradients.grads, multiplier)?;
            let seconds = began.elapsed().as_secs_f64();
            let entry = StepLog {
                step: step + 1,
                total_steps: total,
                epoch: (step + 1) as f64 / steps_per_epoch as f64,
                loss: gradients.loss,
                lr: options.lr * multiplier,
                projector_lr: options.projector_lr * multiplier,
                grad_norm,
                tokens: gradients.tokens,
                tokens_per_second: gradients.tokens as f64 / seconds.max(1e-9),
                seconds,
                skipped_images,
            };
            let line =
                serde_json::to_string(&entry).map_err(|e| Error::InvalidArgument(e.to_string()))?;
            writeln!(log, "{line}").map_err(|e| io_error(&options.out.join(LOG_FILE), e))?;
            on_event(Event::Step(entry));
            let done = step + 1;
            if options.save_every > 0 && done.is_multiple_of(options.save_every) && done < total {
                let dir = save_checkpoint(options, &run, &optimizer, done, skipped_images)?;
                on_event(Event::Saved(dir));
            }
        }
        drop(receiver);
        producer
            .join()
            .map_err(|_| Error::InvalidArgument("the data worker panicked".into()))?;
        Ok(())
    })?;
    if total > start {
        let dir = save_checkpoint(options, &run, &optimizer, total, skipped_images)?;
        on_event(Event::Saved(dir));
    }
    write_loss_plot(&options.out)?;
    let outputs = run.save_outputs(options)?;
    on_event(Event::Saved(outputs.clone()));
    Ok(outputs)
}

/// What encoding needs of the model: its tokenizer and special ids.
pub struct Vocabulary<'a> {
    pub tokenizer: &'a imp::tokenizer::ImpTokenizer,
    pub image_token: u32,
    pub bos: Option<u32>,
    /// Rows an image takes in the spliced sequence.
    pub image_rows: usize,
}

/// Ids and labels of every sample, and what the run will see of them; a sample the stage
/// cannot use, or (with `strict_masks`) one the reference would drop, is an error naming it.
pub fn encode_samples(
    options: &TrainOptions,
    samples: &[Sample],
    template: Template,
    vocabulary: &Vocabulary,
) -> Result<(Vec<Encoded>, DataReport)> {
    if samples.is_empty() {
        return Err(data_error(&options.data, "holds no samples"));
    }
    let mut report = DataReport {
        samples: samples.len(),
        ..DataReport::default()
    };
    let mut encoded = Vec::with_capacity(samples.len());
    let image_rows = vocabulary.image_rows;
    let mut total_tokens = 0;
    for (index, sample) in samples.iter().enumerate() {
        if options.stage == Stage::Projector && !sample.has_image() {
            return Err(data_error(
                &options.data,
                format!(
                    "sample {index} (id {:?}) has no image; stage 1 trains on image captions",
                    sample.id
                ),
            ));
        }
        let enc = encode_with_limit(
            template,
            vocabulary.tokenizer,
            sample,
            vocabulary.image_token,
            vocabulary.bos,
            Some(options.max_len),
        )?;
        if enc.mismatch {
            if options.strict_masks {
                return Err(data_error(
                    &options.data,
                    format!(
                        "sample {index} (id {:?}): tokenization mismatch in the {template} \
                         template; the reference would train on it with every label masked",
                        sample.id
                    ),
                ));
            }
            report.mismatched += 1;
        }
        let tokens = enc.input_ids.len()
            + if sample.has_image() {
                image_rows - 1
            } else {
                0
            };
        let labels = crate::loss::spliced_labels(
            &enc.input_ids,
            &enc.labels,
            vocabulary.image_token,
            image_rows,
            options.max_len,
        );
        if !enc.mismatch && crate::loss::loss_targets(&labels).0.is_empty() {
            report.without_loss += 1;
        }
        report.image_samples += usize::from(sample.has_image());
        report.max_tokens = report.max_tokens.max(tokens.min(options.max_len));
        total_tokens += tokens.min(options.max_len);
        encoded.push(enc);
    }
    report.mean_tokens = total_tokens as f64 / samples.len() as f64;
    Ok((encoded, report))
}

/// `loss.svg` from every step `log.jsonl` holds, resumed runs' included.
fn write_loss_plot(out: &Path) -> Result<()> {
    let log_path = out.join(LOG_FILE);
    let text = imp::files::read_to_string(&log_path, imp::files::limits::DATA_BYTES)?;
    let losses: Vec<f64> = text
        .lines()
        .filter_map(|line| serde_json::from_str::<StepLog>(line).ok())
        .map(|entry| entry.loss)
        .collect();
    let path = out.join(PLOT_FILE);
    fs::write(&path, crate::plot::loss_svg(&losses)).map_err(|e| io_error(&path, e))
}

fn check_options(options: &TrainOptions) -> Result<()> {
    let invalid = |m: String| Err(Error::InvalidArgument(m));
    if options.micro_batch == 0 || options.global_batch == 0 {
        return invalid("--micro-batch and --global-batch must be at least 1".into());
    }
    if !options.global_batch.is_multiple_of(options.micro_batch) {
        return invalid(format!(
            "--global-batch {} is not a multiple of --micro-batch {}",
            options.global_batch, options.micro_batch
        ));
    }
    if options.epochs == 0 {
        return invalid("--epochs must be at least 1".into());
    }
    if !(0.0..1.0).contains(&options.lora.dropout) {
        return invalid(format!(
            "--lora-dropout {} must be in [0, 1)",
            options.lora.dropout
        ));
    }
    if let Some(rate) = options.residual_dropout.filter(|r| !(0.0..1.0).contains(r)) {
        return invalid(format!("--resid-dropout {rate} must be in [0, 1)"));
    }
    if options.lora.r == 0 {
        return invalid("--lora-r must be at least 1".into());
    }
    if !(0.0..=1.0).contains(&options.warmup_ratio) {
        return invalid(format!(
            "--warmup-ratio {} must be in [0, 1]",
            options.warmup_ratio
        ));
    }
    for (flag, value) in [
        ("--lr", options.lr),
        ("--projector-lr", options.projector_lr),
    ] {
        if !(value.is_finite() && value >= 0.0) {
            return invalid(format!("{flag} {value} must be a non-negative number"));
        }
    }
    if options.max_len < 2 {
        return invalid("--max-len must be at least 2".into());
    }
    if !options.image_folder.is_dir() {
        return invalid(format!(
            "--image-folder {} is not a folder",
            options.image_folder.display()
        ));
    }
    Ok(())
}

fn io_error(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        error: source,
    }
}

/// Creates the run folder, refusing one that holds another run unless resuming; returns the
/// checkpoint to resume from.
fn prepare_run_dir(options: &TrainOptions) -> Result<Option<PathBuf>> {
    let out = &options.out;
    // Occupancy is judged below, where resuming may allow it.
    let inputs = [
        options.model.as_path(),
        options.data.as_path(),
        options.image_folder.as_path(),
    ];
    imp::files::check_output_dir(out, &inputs, imp::files::Overwrite::Replace)?;
    let resume = match &options.resume {
        None => None,
        Some(Resume::Dir(dir)) => Some(dir.clone()),
        Some(Resume::Auto) => latest_checkpoint(out)?,
    };
    let occupied = out.is_dir()
        && fs::read_dir(out)
            .map_err(|e| io_error(out, e))?
            .next()
            .is_some();
    if occupied && options.resume.is_none() {
        return Err(Error::InvalidArgument(format!(
            "--out {} already holds files; continue that run with --resume auto, or choose \
             another folder",
            out.display()
        )));
    }
    fs::create_dir_all(out).map_err(|e| io_error(out, e))?;
    Ok(resume)
}

/// The `checkpoint-N` folder with the largest N.
pub fn latest_checkpoint(out: &Path) -> Result<Option<PathBuf>> {
    if !out.is_dir() {
        return Ok(None);
    }
    let mut best: Option<(usize, PathBuf)> = None;
    for entry in fs::read_dir(out).map_err(|e| io_error(out, e))? {
        let entry = entry.map_err(|e| io_error(out, e))?;
        let name = entry.file_name();
        let Some(step) = name
            .to_str()
            .and_then(|n| n.strip_prefix("checkpoint-"))
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        if entry.path().join(STATE_FILE).is_file() && best.as_ref().is_none_or(|(b, _)| step > *b) {
            best = Some((step, entry.path()));
        }
    }
    Ok(best.map(|(_, path)| path))
}

fn save_checkpoint(
    options: &TrainOptions,
    run: &TrainModel,
    optimizer: &AdamW,
    step: usize,
    skipped_images: usize,
) -> Result<PathBuf> {
    let dir = options.out.join(format!("checkpoint-{step}"));
    fs::create_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
    imp::adapter::write_safetensors(&run.trainables.tensors(), &dir.join(TRAINABLES_FILE))?;
    imp::adapter::write_safetensors(&optimizer.state_tensors(), &dir.join(OPTIMIZER_FILE))?;
    let state = CheckpointState {
        step,
        seed: options.seed,
        stage: options.stage,
        skipped_images,
    };
    let json =
        serde_json::to_string_pretty(&state).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    // The state file goes last: a checkpoint without it is incomplete and never resumed from.
    let path = dir.join(STATE_FILE);
    fs::write(&path, json).map_err(|e| io_error(&path, e))?;
    Ok(dir)
}

fn restore_checkpoint(
    dir: &Path,
    run: &TrainModel,
    optimizer: &mut AdamW,
) -> Result<CheckpointState> {
    let path = dir.join(STATE_FILE);
    let text = imp::files::read_to_string(&path, imp::files::limits::CONFIG_BYTES)?;
    let state: CheckpointState =
        serde_json::from_str(&text).map_err(|e| data_error(&path, e.to_string()))?;
    let load = |file: &str| -> Result<HashMap<String, Tensor>> {
        let path = dir.join(file);
        candle_core::safetensors::load_buffer(&imp::files::map(&path)?, run.model.device())
            .map_err(|e| data_error(&path, format!("not a readable safetensors file: {e}")))
    };
    run.trainables.restore(&load(TRAINABLES_FILE)?)?;
    optimizer.restore(state.step as u64, &load(OPTIMIZER_FILE)?)?;
    Ok(state)
}

/// What `--dry-run` reports.
#[derive(Debug, Clone, Serialize)]
pub struct DryRun {
    pub data: DataReport,
    /// For the longest sample, and for 1024 and 2048 tokens.
    pub memory: Vec<crate::memory::MemoryEstimate>,
}

/// Reads and encodes the data and sizes the run from the checkpoint's shapes, without loading
/// any weight.
pub fn dry_run(options: &TrainOptions) -> Result<DryRun> {
    check_options(options)?;
    let source = checkpoint::open(&options.model)?;
    let config = ImpConfig::load(&source.config_files()?, source.as_ref())?;
    let mut tokenizer = source.tokenizer()?;
    let special = imp::template::SpecialTokens::add_to(&mut tokenizer, &config)?;
    let template = match options.stage {
        Stage::Projector => Template::Plain,
        Stage::Lora => Template::for_family(config.decoder.family),
    };
    let samples = data::read(&options.data)?;
    let vocabulary = Vocabulary {
        tokenizer: &tokenizer,
        image_token: special.image,
        bos: special.bos,
        image_rows: config.vision.grid_size().pow(2),
    };
    let (encoded, mut report) = encode_samples(options, &samples, template, &vocabulary)?;
    planned_steps(options, &samples, &mut report);
    let most_labels = encoded.iter().map(Encoded::loss_tokens).max().unwrap_or(0);
    let lora = (options.stage == Stage::Lora).then_some(&options.lora);
    let residual_dropout = options
        .residual_dropout
        .unwrap_or(config.decoder.residual_dropout);
    let memory = [report.max_tokens, 1024, 2048]
        .into_iter()
        .map(|tokens| {
            crate::memory::estimate(
                source.as_ref(),
                &config,
                lora,
                options.dtype,
                tokens,
                most_labels.min(tokens),
                options.recompute,
                residual_dropout,
            )
        })
        .collect::<Result<_>>()?;
    Ok(DryRun {
        data: report,
        memory,
    })
}
