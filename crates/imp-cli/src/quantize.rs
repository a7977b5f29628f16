//! `imp quantize` (a model folder into one GGUF file) and `imp quant-report` (what a
//! quantization plan does to the model's predictions), plus the `--quant` options every command
//! that loads a model takes.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use imp::files::Overwrite;
use imp::hub::{resolve_model, HubOptions};
use imp::quant::{Quantization, WeightGroup};
use imp::quantize::write_gguf;
use imp_tools::quality::{quality_report, ReportInput};
use indicatif::{ProgressBar, ProgressStyle};

use crate::ModelArgs;

/// Weight formats of the model's matrices (linear layers and the token embedding). Each is
/// f32, f16, bf16, q8_0, q6_k, q4_k or q4_0; a folder's weights are converted as they load.
#[derive(clap::Args)]
pub struct QuantArgs {
    /// Format of every part's matrices.
    #[arg(long)]
    quant: Option<String>,
    /// Format of the language model's matrices (overrides --quant).
    #[arg(long)]
    llm_quant: Option<String>,
    /// Format of the vision tower's matrices (overrides --quant); the projector follows it.
    #[arg(long)]
    vision_quant: Option<String>,
    /// Format of the projector's matrices (default: the vision tower's).
    #[arg(long)]
    projector_quant: Option<String>,
}

impl QuantArgs {
    pub fn plan(&self) -> Result<Quantization> {
        Ok(Quantization::from_names(
            self.quant.as_deref(),
            self.llm_quant.as_deref(),
            self.vision_quant.as_deref(),
            self.projector_quant.as_deref(),
        )?)
    }
}

#[derive(clap::Args)]
pub struct QuantizeArgs {
    /// Model folder, or a Hugging Face repo id.
    #[arg(long)]
    model: String,
    #[command(flatten)]
    quant: QuantArgs,
    /// The GGUF file to write (never one of the model's own files).
    #[arg(long)]
    out: PathBuf,
    /// Replace `--out` if it exists.
    #[arg(long)]
    force: bool,
}

#[derive(clap::Args)]
pub struct ReportArgs {
    /// The model and the plan to measure (--quant and the per-part options, and --kv-cache);
    /// --dtype is the variants' compute dtype, the reference always runs in f32 with an f32
    /// KV cache.
    #[command(flatten)]
    model: ModelArgs,
    /// Image to ask about; repeat for several (default: the photos built into imp).
    #[arg(long)]
    image: Vec<PathBuf>,
    /// Question to ask about every image; repeat for several (default: three generic ones).
    #[arg(long)]
    question: Vec<String>,
    /// Length cap of the f32 model's greedy answers, along which all variants are compared.
    #[arg(long, default_value_t = 32)]
    max_new_tokens: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

const DEFAULT_QUESTIONS: [&str; 3] = [
    "What is shown in this image?",
    "Describe the image in detail.",
    "What colours stand out in this picture?",
];

pub fn quantize(args: QuantizeArgs) -> Result<()> {
    let plan = args.quant.plan()?;
    let dir = resolve_model(&args.model, &HubOptions::default())?;
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template(
            "[{bar:30}] {pos}/{len} tensors, {elapsed_precise} elapsed, ETA {eta_precise} {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let start = Instant::now();
    let overwrite = Overwrite::forced(args.force);
    let size = write_gguf(
        &dir,
        &plan,
        &args.out,
        overwrite,
        &mut |done, total, what| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
            bar.set_message(what.to_owned());
        },
    )
    .with_context(|| format!("quantizing {} into {}", dir.display(), args.out.display()))?;
    bar.finish_and_clear();
    eprintln!(
        "wrote {} ({:.2} GB; {plan}) in {:.1} s",
        args.out.display(),
        size as f64 / 1e9,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

pub fn report(args: ReportArgs) -> Result<()> {
    let plan = args.model.load.quant.plan()?;
    let options = crate::load_options(&args.model.load)?;
    let dir = resolve_model(&args.model.model, &HubOptions::default())?;
    let images = if args.image.is_empty() {
        crate::bundled::photos()?
    } else {
        args.image
            .iter()
            .map(|path| imp::preprocess::load_rgb(path))
            .collect::<imp::Result<_>>()?
    };
    let input = ReportInput {
        images,
        questions: if args.question.is_empty() {
            DEFAULT_QUESTIONS.map(str::to_owned).to_vec()
        } else {
            args.question.clone()
        },
        max_new_tokens: args.max_new_tokens,
    };
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template(
            "[{bar:30}] {pos}/{len} passes, {elapsed_precise} elapsed, ETA {eta_precise}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let report = quality_report(&dir, plan, &options, &input, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })
    .with_context(|| format!("measuring the quality of {plan} on {}", dir.display()))?;
    bar.finish_and_clear();

    if args.json {
        let mut object = serde_json::to_value(&report)?;
        object["model"] = dir.display().to_string().into();
        println!("{object}");
        return Ok(());
    }
    println!(
        "{} image questions ({} images), {} positions teacher-forced along the f32 greedy answers",
        report.samples,
        input.images.len(),
        report.positions
    );
    println!(
        "{:<14} {:<60} {:>10} {:>10} {:>7}",
        "variant", "formats", "mean KL", "p99 KL", "top-1"
    );
    for v in &report.variants {
        println!(
            "{:<14} {:<60} {:>10.2e} {:>10.2e} {:>6.1}%",
            v.variant,
            v.plan,
            v.mean_kl,
            v.p99_kl,
            100.0 * v.top1_agreement
        );
    }
    Ok(())
}

/// One line per weight group for `imp info`: part, format, count, names, padding, size.
pub fn weight_lines(groups: &[WeightGroup]) -> Vec<String> {
    groups
        .iter()
        .map(|g| {
            let width = match (g.width, g.stored_width) {
                (0, _) => String::new(),
                (width, stored) if stored == width => format!(", in {width}"),
                (width, stored) => format!(", in {width} zero-padded to {stored}"),
            };
            format!(
                "{:<9} {:<5} {:>4} x {}{width}, {:.1} MB",
                g.part.name(),
                g.format,
                g.tensors,
                g.name,
                g.bytes as f64 / 1e6
            )
        })
        .collect()
}
