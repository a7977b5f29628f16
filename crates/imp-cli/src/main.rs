//! `imp`: answer questions about images with Imp models, on the CPU.

mod bench;
mod bundled;
mod eval;
mod memory;
mod quantize;
mod train;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::DType;
use clap::{Parser, Subcommand, ValueEnum};
use imp::adapter::Adapter;
use imp::hub::{resolve_model, HubOptions};
use imp::{
    generate, Constraint, GenerationOptions, ImpModel, KvCache, LoadOptions, Prompt, SamplingParams,
};
use imp_tools::synthetic::{self, Preset};
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "imp",
    version,
    about = "Run Imp multimodal models (MILVLG) on the CPU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Answer a question about an image.
    Run(RunArgs),
    /// Show what was detected in a model folder.
    Info(InfoArgs),
    /// Write a random-weight checkpoint with a released model's real shapes and names.
    Synth(SynthArgs),
    /// Serve an OpenAI-compatible chat completions API (see the README).
    Serve(imp_server::ServerConfig),
    /// Convert a model folder into one GGUF file with quantized weights.
    Quantize(quantize::QuantizeArgs),
    /// Measure how far a quantization plan moves the predictions from the f32 model's.
    QuantReport(quantize::ReportArgs),
    /// Measure the speed of every stage of an image question, and the memory bandwidth.
    Bench(bench::BenchArgs),
    /// Fine-tune: the Imp recipe's projector pre-training (stage 1) or LoRA (stage 2).
    Train(Box<train::TrainCommand>),
    /// Run the paper's benchmarks, score them by their official rules, compare runs.
    Eval {
        #[command(subcommand)]
        command: eval::EvalCommand,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Dtype {
    F32,
    F16,
    Bf16,
}

impl From<Dtype> for DType {
    fn from(d: Dtype) -> Self {
        match d {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::Bf16 => DType::BF16,
        }
    }
}

#[derive(clap::Args)]
struct ModelArgs {
    /// Model folder, or a Hugging Face repo id such as MILVLG/Imp-v1.5-3B-196 (found in the
    /// Hugging Face cache; downloaded when online and missing), or a .gguf file written by
    /// `imp quantize`.
    #[arg(long)]
    model: String,
    #[command(flatten)]
    load: LoadArgs,
}

/// How a model is loaded: compute dtype, visual-token budget, weight formats.
#[derive(clap::Args)]
struct LoadArgs {
    /// Compute dtype.
    #[arg(long, value_enum, default_value = "f32")]
    dtype: Dtype,
    /// Run the vision tower at this many pixels a side (a multiple of 14), resizing its
    /// position table by bicubic interpolation; fewer pixels, fewer visual tokens.
    #[arg(long)]
    image_size: Option<usize>,
    /// Average KxK patch neighbourhoods before the projector (2: 729 -> 196 visual tokens).
    #[arg(long, default_value_t = 1)]
    pool: usize,
    #[command(flatten)]
    quant: quantize::QuantArgs,
    /// A LoRA adapter folder (PEFT's format, as `imp train` writes it), applied unmerged.
    #[arg(long)]
    lora: Option<PathBuf>,
    /// Storage of the attention keys and values: f32, f16, bf16 or q8 (8-bit, one scale per
    /// head and token). Default: f16 on the CPU.
    #[arg(long)]
    kv_cache: Option<String>,
}

#[derive(clap::Args)]
struct RunArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Image file (PNG, JPEG, WebP, GIF, BMP, TIFF); repeat for several images.
    #[arg(long, required = true)]
    image: Vec<PathBuf>,
    /// The question. It is wrapped in the model's chat template after an `<image>` marker per
    /// image, unless it already contains `<image>`: then it is used as the complete prompt.
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value_t = 512)]
    max_new_tokens: usize,
    /// 0 is greedy decoding.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long)]
    top_k: Option<usize>,
    #[arg(long)]
    top_p: Option<f32>,
    #[arg(long)]
    min_p: Option<f32>,
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop before this text; repeat for several.
    #[arg(long)]
    stop: Vec<String>,
    /// Report the K most likely tokens with their log-probabilities at each step (with --json).
    #[arg(long, default_value_t = 0)]
    top_logprobs: usize,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    constraint: ConstraintArgs,
}

/// What the answer must match (one at most): its tokens are chosen only among those that keep
/// it matching.
#[derive(clap::Args, Default)]
#[group(multiple = false)]
pub struct ConstraintArgs {
    /// The answer is JSON valid under this JSON schema (a file).
    #[arg(long, value_name = "FILE")]
    json_schema: Option<PathBuf>,
    /// The answer is a JSON object.
    #[arg(long)]
    json_object: bool,
    /// The whole answer matches this regular expression.
    #[arg(long, value_name = "RE")]
    regex: Option<String>,
    /// The answer follows this Lark grammar (a file; `start:` is the whole answer).
    #[arg(long, value_name = "FILE.lark")]
    grammar: Option<PathBuf>,
}

impl ConstraintArgs {
    pub fn constraint(&self) -> Result<Option<Constraint>> {
        let read = |path: &PathBuf| {
            imp::files::read_to_string(path, imp::files::limits::CONFIG_BYTES)
                .with_context(|| format!("reading {}", path.display()))
        };
        Ok(if let Some(path) = &self.json_schema {
            let schema = serde_json::from_str(&read(path)?)
                .with_context(|| format!("{}: not JSON", path.display()))?;
            Some(Constraint::JsonSchema(schema))
        } else if self.json_object {
            Some(Constraint::JsonObject)
        } else if let Some(regex) = &self.regex {
            Some(Constraint::Regex(regex.clone()))
        } else if let Some(path) = &self.grammar {
            Some(Constraint::Lark(read(path)?))
        } else {
            None
        })
    }
}

#[derive(clap::Args)]
struct InfoArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct SynthArgs {
    /// imp-v1-3b, imp-v1.5-3b, imp-v1.5-3b-196, imp-v1.5-2b or imp-v1.5-4b.
    #[arg(long)]
    preset: String,
    /// Folder to write (created if needed).
    #[arg(long)]
    out: PathBuf,
    /// Write into `--out` even if it holds files (same-named ones are replaced).
    #[arg(long)]
    force: bool,
    /// Folder whose tokenizer files to copy (default: the family's tokenizer, built into imp).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// `imp serve`, until SIGTERM or Ctrl-C and its grace period.
fn serve(config: imp_server::ServerConfig) -> anyhow::Result<()> {
    memory::return_freed_memory();
    let runtime = imp_server::runtime(&config)?;
    let result = runtime.block_on(imp_server::serve(config));
    // Generations still running after the grace period were cancelled with their connections;
    // do not wait on a blocking thread that is slow to notice.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    result
}

fn main() -> ExitCode {
    // `RUST_LOG=imp=trace` times every model part and layer as its span closes.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        memory::keep_freed_memory();
    }
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Info(args) => info(args),
        Command::Synth(args) => synth(args),
        Command::Serve(config) => serve(config),
        Command::Quantize(args) => quantize::quantize(args),
        Command::QuantReport(args) => quantize::report(args),
        Command::Train(command) => train::run(*command),
        Command::Eval { command } => eval::run(command),
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_options(args: &LoadArgs) -> Result<LoadOptions> {
    Ok(LoadOptions {
        dtype: args.dtype.into(),
        image_size: args.image_size,
        pool: args.pool,
        quantization: args.quant.plan()?,
        adapter: args
            .lora
            .as_ref()
            .map(|dir| {
                Adapter::load(dir, &candle_core::Device::Cpu)
                    .map(Arc::new)
                    .with_context(|| format!("loading the adapter {}", dir.display()))
            })
            .transpose()?,
        kv_cache: args
            .kv_cache
            .as_deref()
            .map(str::parse::<KvCache>)
            .transpose()
            .context("--kv-cache")?,
        ..Default::default()
    })
}

fn load(args: &ModelArgs) -> Result<ImpModel> {
    let options = load_options(&args.load)?;
    let dir = resolve_model(&args.model, &HubOptions::default())?;
    ImpModel::load(&dir, &options).with_context(|| format!("loading {}", dir.display()))
}

fn run(args: RunArgs) -> Result<()> {
    let sampling = SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        repetition_penalty: args.repetition_penalty,
        seed: args.seed,
    };
    sampling.validate()?;
    if args.max_new_tokens == 0 {
        bail!("--max-new-tokens must be at least 1");
    }
    // Read the inputs before the (slow) model load so that a bad file fails fast.
    let constraint = args.constraint.constraint()?;
    let images = args
        .image
        .iter()
        .map(|path| imp::preprocess::load_rgb(path))
        .collect::<imp::Result<Vec<_>>>()?;
    let start = Instant::now();
    let model = load(&args.model)?;
    let load_s = start.elapsed().as_secs_f64();

    let options = GenerationOptions {
        max_new_tokens: args.max_new_tokens,
        sampling,
        stop_strings: args.stop,
        top_logprobs: args.top_logprobs,
        grammar: constraint
            .map(|c| model.compile_constraint(&c))
            .transpose()?,
        ..Default::default()
    };
    let prompt = Prompt::from_cli(&args.prompt);
    let mut stdout = std::io::stdout().lock();
    let stream = !args.json;
    let generation = generate(&model, &prompt, &images, &options, &mut |text| {
        if stream {
            // A closed stdout (e.g. `| head`) must not abort the generation with a panic.
            let _ = stdout.write_all(text.as_bytes());
            let _ = stdout.flush();
        }
    })?;
    if !args.json {
        writeln!(stdout)?;
        return Ok(());
    }
    let t = &generation.timings;
    let top: Vec<Vec<(u32, f32)>> = generation.top_logprobs.clone();
    let object = json!({
        "text": generation.text,
        "tokens": generation.tokens,
        "prompt_tokens": generation.prompt_tokens,
        "image_tokens": generation.image_tokens,
        "finish_reason": generation.finish_reason.as_str(),
        "top_logprobs": top,
        "timings": {
            "load_s": load_s,
            "preprocess_s": t.preprocess.as_secs_f64(),
            "vision_s": t.vision.as_secs_f64(),
            "projector_s": t.projector.as_secs_f64(),
            "prefill_s": t.prefill.as_secs_f64(),
            "ttft_s": t.time_to_first_token().as_secs_f64(),
            "decode_s": t.decode.as_secs_f64(),
            "decode_tokens_per_s": t.decode_tokens_per_second(),
            "image_size": model.config().vision.image_size,
            "pool": model.pool(),
            "peak_rss_bytes": peak_rss_bytes(),
        },
    });
    writeln!(stdout, "{object}")?;
    Ok(())
}

fn info(args: InfoArgs) -> Result<()> {
    let model = load(&args.model)?;
    let c = model.config();
    let i = model.info();
    let d = &c.decoder;
    let v = &c.vision;
    let storage: Vec<String> = i
        .storage
        .iter()
        .map(|(dtype, n)| format!("{dtype} ({n} values)"))
        .collect();
    let object = json!({
        "variant": i.variant,
        "model_type": c.model_type,
        "naming_style": c.style.label(),
        "backbone": d.family.label(),
        "parameters": {
            "vision": i.parameters_vision,
            "projector": i.parameters_projector,
            "llm": i.parameters_llm,
            "total": i.parameters_vision + i.parameters_projector + i.parameters_llm,
        },
        "storage_dtype": storage,
        "weights": i.weights,
        "llm": {
            "hidden_size": d.hidden_size, "layers": d.num_layers, "heads": d.num_heads,
            "kv_heads": d.num_kv_heads, "head_dim": d.head_dim, "rotary_dim": d.rotary_dim,
            "intermediate_size": d.intermediate_size, "vocab_size": d.vocab_size,
            "rope_theta": d.rope_theta,
        },
        "vision": {
            "image_size": v.image_size, "trained_image_size": v.position_grid * v.patch_size,
            "pool": model.pool(), "patch_size": v.patch_size, "layers": v.num_layers,
            "hidden_size": v.hidden_size, "heads": v.num_heads, "settings_from": c.vision_source,
        },
        "visual_tokens": model.image_tokens(),
        "image_aspect_ratio": format!("{:?}", c.aspect).to_lowercase(),
        "max_context": c.max_context,
        "image_token_id": model.image_token_id(),
        "stop_token_ids": model.stop_token_ids(),
    });
    if args.json {
        println!("{object}");
        return Ok(());
    }
    let millions = |n: usize| format!("{:.1} M", n as f64 / 1e6);
    println!("variant        {}", i.variant);
    println!("model_type     {}", c.model_type);
    println!("naming style   {}", c.style.label());
    println!(
        "backbone       {} ({} layers, hidden {}, {} heads)",
        d.family.label(),
        d.num_layers,
        d.hidden_size,
        d.num_heads
    );
    println!(
        "parameters     vision {}, projector {}, llm {}",
        millions(i.parameters_vision),
        millions(i.parameters_projector),
        millions(i.parameters_llm)
    );
    println!("storage dtype  {}", storage.join(", "));
    for (n, line) in quantize::weight_lines(&i.weights).iter().enumerate() {
        println!("{:<15}{line}", if n == 0 { "weights" } else { "" });
    }
    println!(
        "vision         SigLIP {} layers, {} px, patch {} (settings from {})",
        v.num_layers, v.image_size, v.patch_size, c.vision_source
    );
    println!(
        "visual tokens  {} ({}x{} patches, pool {})",
        model.image_tokens(),
        v.grid_size(),
        v.grid_size(),
        model.pool()
    );
    println!("aspect ratio   {:?}", c.aspect);
    println!("max context    {}", c.max_context);
    println!("stop ids       {:?}", model.stop_token_ids());
    let isas = imp_kernels::Isa::available();
    println!(
        "cpu kernels    {:?} (this CPU runs {isas:?})",
        isas.last().copied().unwrap_or(imp_kernels::Isa::Scalar)
    );
    Ok(())
}

fn synth(args: SynthArgs) -> Result<()> {
    let preset = Preset::from_name(&args.preset)?;
    let built_in;
    let tokenizer = match &args.tokenizer {
        Some(dir) => dir,
        None => {
            built_in = bundled::tokenizer_folder(preset.family())?;
            built_in.path()
        }
    };
    let start = Instant::now();
    let overwrite = imp::files::Overwrite::forced(args.force);
    let bytes = synthetic::write_checkpoint(preset, &args.out, tokenizer, args.seed, overwrite)?;
    eprintln!(
        "wrote {} ({:.2} GB of weights) to {} in {:.1} s",
        preset.name(),
        bytes as f64 / 1e9,
        args.out.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Peak resident memory of this process, where the platform reports it.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
