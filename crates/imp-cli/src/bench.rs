//! `imp bench`: times every stage of an image question on a real or synthetic model, with the
//! machine's memory bandwidth measured in the same run so decode can be put against its limit.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use clap::Args;
use image::RgbImage;
use imp::{encode_images, generate_prepared, PreparedPrompt, Timings};
use imp::{GenerationOptions, ImageId, ImpModel, Prompt};
use imp_tools::synthetic::{Preset, SyntheticCheckpoint};
use serde_json::{json, Value};

use crate::LoadArgs;

#[derive(Args)]
pub struct BenchArgs {
    /// Model folder, Hugging Face repo id or .gguf file.
    #[arg(
        long,
        required_unless_present = "synthetic",
        conflicts_with = "synthetic"
    )]
    model: Option<String>,
    /// Random weights with a released model's shapes, made in memory (no files): imp-v1-3b,
    /// imp-v1.5-3b, imp-v1.5-3b-196, imp-v1.5-2b or imp-v1.5-4b.
    #[arg(long)]
    synthetic: Option<String>,
    #[command(flatten)]
    load: LoadArgs,
    /// Worker threads (default: every core, or RAYON_NUM_THREADS).
    #[arg(long)]
    threads: Option<usize>,
    /// Text tokens of the prompt, template included, besides the image's rows.
    #[arg(long, default_value_t = 64)]
    prompt_tokens: usize,
    /// Tokens to decode (stop tokens do not end the run).
    #[arg(long, default_value_t = 32)]
    gen_tokens: usize,
    /// Measured runs after one warm-up; medians are reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Image to ask about (default: a generated 640x480 picture).
    #[arg(long)]
    image: Option<PathBuf>,
    /// Text only: no image in the prompt.
    #[arg(long)]
    no_image: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Seed of the synthetic weights.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also decode the image question within this constraint, and compare its decode speed
    /// with the free decode of the same run (it ends where the constraint is complete).
    #[command(flatten)]
    constraint: crate::ConstraintArgs,
}

/// Bytes the bandwidth probe streams: far beyond any last-level cache.
const PROBE_BYTES: usize = 1 << 30;
/// Text-only prompt of the short-context decode, the baseline that long-context decode is
/// compared with.
const SHORT_PROMPT_TOKENS: usize = 8;

/// One measured run.
struct Sample {
    /// Image stages and prefill of the image question.
    stages: Timings,
    decode_tok_s: f64,
    short_decode_tok_s: f64,
    /// The image question within `--json-schema` (or another constraint): decode speed and
    /// tokens generated.
    constrained: Option<(f64, usize)>,
}

pub fn run(args: BenchArgs) -> Result<()> {
    check_args(&args)?;
    // Inputs are read before the (slow) bandwidth probe and model load, so a bad file fails fast.
    let constraint = args.constraint.constraint()?;
    let image = match &args.image {
        Some(path) => Some(imp::load_rgb(path)?),
        None => (!args.no_image).then(generated_image),
    };
    let threads = candle_core::utils::get_num_threads();
    let bandwidth = imp_tools::bandwidth::read_bandwidth(threads, PROBE_BYTES, 5);

    let start = Instant::now();
    let (model, name, weight_file_bytes) = load(&args)?;
    let load_s = start.elapsed().as_secs_f64();

    let images: Vec<RgbImage> = image.into_iter().collect();
    let ids: Vec<ImageId> = images.iter().map(ImageId::of_image).collect();
    let prepared = prompt_of(&model, args.prompt_tokens, &ids)?;
    let short = prompt_of(&model, SHORT_PROMPT_TOKENS, &[])?;
    let generation = GenerationOptions {
        max_new_tokens: args.gen_tokens,
        ignore_stop_tokens: true,
        ..Default::default()
    };
    let constrained = constraint
        .map(|c| model.compile_constraint(&c))
        .transpose()?
        .map(|grammar| GenerationOptions {
            grammar: Some(grammar),
            ..generation.clone()
        });
    if prepared.len() + args.gen_tokens > model.config().max_context {
        bail!(
            "{} prompt positions plus {} new tokens exceed the context of {}",
            prepared.len(),
            args.gen_tokens,
            model.config().max_context
        );
    }

    let mut samples = Vec::with_capacity(args.repeat);
    for round in 0..=args.repeat {
        if !args.json {
            let what = if round == 0 { "warm-up" } else { "run" };
            eprintln!("{what} {round}/{}", args.repeat);
        }
        let sample = measure(
            &model,
            &images,
            &prepared,
            &short,
            &generation,
            constrained.as_ref(),
        )?;
        if round > 0 {
            samples.push(sample);
        }
    }

    let measured = Measured {
        model: &model,
        name,
        threads,
        images: images.len(),
        prompt_tokens: prepared.len(),
        load_s,
        weight_file_bytes,
        bandwidth,
        samples: &samples,
    };
    let report = measured.report(&args);
    if args.json {
        println!("{report}");
    } else {
        print_table(&report);
    }
    Ok(())
}

fn check_args(args: &BenchArgs) -> Result<()> {
    if let Some(threads) = args.threads {
        if threads == 0 {
            bail!("--threads must be at least 1");
        }
        // Read by candle and by rayon's global pool when they first start, which is below.
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
    if args.gen_tokens < 2 {
        bail!("--gen-tokens must be at least 2 (the first token comes from the prefill)");
    }
    if args.repeat == 0 {
        bail!("--repeat must be at least 1");
    }
    Ok(())
}

/// The model to measure, its name in the report and the bytes of its weight files (0 for a
/// synthetic model, which has none).
fn load(args: &BenchArgs) -> Result<(ImpModel, String, u64)> {
    let options = crate::load_options(&args.load)?;
    match (&args.model, &args.synthetic) {
        (_, Some(preset)) => {
            let preset = Preset::from_name(preset)?;
            let tokenizer = crate::bundled::tokenizer_folder(preset.family())?;
            let checkpoint = SyntheticCheckpoint::new(preset, tokenizer.path(), args.seed);
            let model = ImpModel::from_source(&checkpoint, &options)?;
            Ok((model, format!("synthetic {}", preset.name()), 0))
        }
        (Some(model), None) => {
            let dir = imp::hub::resolve_model(model, &imp::hub::HubOptions::default())?;
            let loaded = ImpModel::load(&dir, &options)
                .with_context(|| format!("loading {}", dir.display()))?;
            Ok((loaded, model.clone(), weight_file_bytes(&dir)?))
        }
        (None, None) => bail!("give --model or --synthetic"),
    }
}

/// Bytes of the weight files the loader read, so peak memory can be put against the file size:
/// the GGUF file, or the folder's safetensors (the shards its index names, else
/// `model.safetensors`; other `.safetensors` files in the folder are not weights).
fn weight_file_bytes(path: &Path) -> Result<u64> {
    let size = |file: &Path| -> Result<u64> {
        let metadata =
            std::fs::metadata(file).with_context(|| format!("reading {}", file.display()))?;
        Ok(metadata.len())
    };
    if !path.is_dir() {
        return size(path);
    }
    let index = path.join("model.safetensors.index.json");
    if !index.is_file() {
        return size(&path.join("model.safetensors"));
    }
    let text = imp::files::read_to_string(&index, imp::files::limits::CONFIG_BYTES)?;
    let index: Value =
        serde_json::from_str(&text).with_context(|| format!("reading {}", index.display()))?;
    let shards: BTreeSet<&str> = index["weight_map"]
        .as_object()
        .into_iter()
        .flat_map(|map| map.values().filter_map(Value::as_str))
        .collect();
    shards
        .into_iter()
        .map(|shard| size(&path.join(shard)))
        .sum()
}

/// The CPU's model name: `model name` in /proc/cpuinfo; ARM cores list no name there, only
/// their implementer and part numbers. "unknown" where neither can be read: a report is not
/// worth failing over it.
fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |key: &str| {
        info.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            let value = value.trim();
            (name.trim() == key && !value.is_empty()).then_some(value)
        })
    };
    if let Some(name) = field("model name") {
        return name.to_owned();
    }
    match (field("CPU implementer"), field("CPU part")) {
        (Some(implementer), Some(part)) => format!(
            "{} (CPU implementer {implementer}, part {part})",
            std::env::consts::ARCH
        ),
        _ => "unknown".to_owned(),
    }
}

/// The instruction-set path each kernel family takes on this CPU, named as `imp info` and
/// `IMP_EXPECT_ISA` name them: the block-format matrix products (q4_0, q4_k, q8_0) and the
/// fused float kernels (attention, norms, GELU).
fn kernel_paths() -> Value {
    json!({
        "block_matmul": format!("{:?}", imp_kernels::packed::best()),
        "fused": format!("{:?}", imp_kernels::simd::best()),
    })
}

/// What one `imp bench` run measured, before it is summarised.
struct Measured<'a> {
    model: &'a ImpModel,
    name: String,
    threads: usize,
    images: usize,
    prompt_tokens: usize,
    load_s: f64,
    /// 0 for a synthetic model.
    weight_file_bytes: u64,
    /// Read bandwidth in bytes per second, measured in the same run.
    bandwidth: f64,
    samples: &'a [Sample],
}

impl Measured<'_> {
    fn median(&self, f: &dyn Fn(&Sample) -> f64) -> f64 {
        let mut values: Vec<f64> = self.samples.iter().map(f).collect();
        values.sort_by(f64::total_cmp);
        let n = values.len();
        if n % 2 == 1 {
            values[n / 2]
        } else {
            (values[n / 2 - 1] + values[n / 2]) / 2.0
        }
    }

    /// The medians of every stage, and decode against the bandwidth bound.
    fn report(&self, args: &BenchArgs) -> Value {
        let model = self.model;
        let median = |f: &dyn Fn(&Sample) -> f64| self.median(f);
        let decode_tok_s = median(&|s| s.decode_tok_s);
        let short_decode_tok_s = median(&|s| s.short_decode_tok_s);
        let weight_bytes = model.info().decode_weight_bytes;
        let weight_memory_bytes: usize = model.info().weights.iter().map(|g| g.bytes).sum();
        let bound_tok_s = self.bandwidth / weight_bytes as f64;
        let prefill_s = median(&|s| s.stages.prefill.as_secs_f64());
        let constrained = self.samples[0].constrained.is_some().then(|| {
            let tok_s = median(&|s| s.constrained.map_or(f64::NAN, |(tok_s, _)| tok_s));
            let tokens = median(&|s| s.constrained.map_or(f64::NAN, |(_, n)| n as f64));
            json!({
                "decode_tok_s": tok_s,
                "tokens": tokens,
                "to_free_decode": tok_s / decode_tok_s,
            })
        });
        json!({
            "cpu": cpu_model(),
            "isa": kernel_paths(),
            "model": self.name,
            "quant": quant_label(model),
            "weight_file_bytes": self.weight_file_bytes,
            "weight_memory_bytes": weight_memory_bytes,
            "kv_cache": model.kv_cache().to_string(),
            "kv_cache_bytes_per_token": model.kv_cache().bytes_per_token(&model.config().decoder),
            "threads": self.threads,
            "image_size": (self.images > 0).then(|| model.config().vision.image_size),
            "image_tokens": model.image_tokens() * self.images,
            "repeat": args.repeat,
            "load_s": self.load_s,
            "preprocess_s": median(&|s| s.stages.preprocess.as_secs_f64()),
            "vision_s": median(&|s| s.stages.vision.as_secs_f64()),
            "projector_s": median(&|s| s.stages.projector.as_secs_f64()),
            "prefill_s": prefill_s,
            "prefill_tokens": self.prompt_tokens,
            "prefill_tok_s": self.prompt_tokens as f64 / prefill_s,
            "ttft_s": median(&|s| s.stages.time_to_first_token().as_secs_f64()),
            "gen_tokens": args.gen_tokens,
            "decode_tok_s": decode_tok_s,
            "short_context_decode_tok_s": short_decode_tok_s,
            "long_to_short_decode": decode_tok_s / short_decode_tok_s,
            "constrained": constrained,
            "peak_rss_bytes": crate::peak_rss_bytes(),
            "weight_bytes_per_token": weight_bytes,
            "bandwidth_gb_s": self.bandwidth / 1e9,
            "bandwidth_bound_tok_s": bound_tok_s,
            "decode_fraction_of_bound": decode_tok_s / bound_tok_s,
        })
    }
}

/// One image question end to end, then a short text-only decode for comparison.
fn measure(
    model: &ImpModel,
    images: &[RgbImage],
    prepared: &PreparedPrompt,
    short: &PreparedPrompt,
    options: &GenerationOptions,
    constrained: Option<&GenerationOptions>,
) -> Result<Sample> {
    // Each generation has a session of its own, dropped before the next one starts, so the
    // peak memory is that of one conversation.
    let fresh = |prompt: &PreparedPrompt, rows: &[Tensor], options: &GenerationOptions| {
        generate_prepared(
            model,
            &mut model.new_session(),
            prompt,
            rows,
            options,
            &mut |_| {},
        )
    };
    let mut stages = Timings::default();
    let rows = encode_images(model, images, &mut stages)?;
    let generation = fresh(prepared, &rows, options)?;
    stages.prefill = generation.timings.prefill;
    let decode_tok_s = generation.timings.decode_tokens_per_second();

    let generation = fresh(short, &[], options)?;
    let short_decode_tok_s = generation.timings.decode_tokens_per_second();

    let constrained = match constrained {
        Some(options) => {
            let generation = fresh(prepared, &rows, options)?;
            Some((
                generation.timings.decode_tokens_per_second(),
                generation.tokens.len(),
            ))
        }
        None => None,
    };
    Ok(Sample {
        stages,
        decode_tok_s,
        short_decode_tok_s,
        constrained,
    })
}

/// A question whose text part (template included) is `tokens` tokens long, or as close as the
/// template allows.
fn prompt_of(model: &ImpModel, tokens: usize, images: &[ImageId]) -> Result<PreparedPrompt> {
    let image_rows = model.image_tokens() * images.len();
    let text_tokens = |words: usize| -> Result<(PreparedPrompt, usize)> {
        let prompt = Prompt::Question(" the".repeat(words));
        let prepared = PreparedPrompt::new(model, &prompt, images)?;
        let text = prepared.len() - image_rows + images.len();
        Ok((prepared, text))
    };
    let (mut prepared, overhead) = text_tokens(0)?;
    let mut words = tokens.saturating_sub(overhead);
    // Each " the" is one token in every family's tokenizer, but merges at the edges may shift
    // the count by one; step until it fits.
    for _ in 0..8 {
        let (candidate, text) = text_tokens(words)?;
        prepared = candidate;
        match text.cmp(&tokens) {
            std::cmp::Ordering::Equal => break,
            std::cmp::Ordering::Less => words += 1,
            std::cmp::Ordering::Greater if words > 0 => words -= 1,
            std::cmp::Ordering::Greater => break,
        }
    }
    Ok(prepared)
}

/// A smooth picture with some texture, so preprocessing does real resampling work.
fn generated_image() -> RgbImage {
    RgbImage::from_fn(640, 480, |x, y| {
        let texture = ((x * 7 + y * 13) % 32) as u8;
        image::Rgb([(x / 3) as u8 ^ texture, (y / 2) as u8, ((x + y) / 5) as u8])
    })
}

/// The formats of the model's matrices: one name when every part uses the same.
fn quant_label(model: &ImpModel) -> String {
    let formats: BTreeSet<(String, String)> = model
        .info()
        .weights
        .iter()
        .filter(|g| g.width > 0)
        .map(|g| (g.part.to_string(), g.format.clone()))
        .collect();
    let distinct: BTreeSet<&String> = formats.iter().map(|(_, f)| f).collect();
    if distinct.len() == 1 {
        return distinct.into_iter().next().cloned().unwrap_or_default();
    }
    formats
        .iter()
        .map(|(part, format)| format!("{part} {format}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_table(report: &Value) {
    let number = |key: &str| report[key].as_f64().unwrap_or(f64::NAN);
    let seconds = |key: &str| format!("{:.3} s", number(key));
    let text = |key: &str| report[key].as_str().unwrap_or("").to_owned();
    let isa = &report["isa"];
    let file = if report["weight_file_bytes"] == 0 {
        "no file (synthetic)".to_owned()
    } else {
        format!("{:.1} MB file", number("weight_file_bytes") / 1e6)
    };
    let rows = [
        ("cpu", text("cpu")),
        (
            "kernel paths",
            format!(
                "block matmul {}, fused float {}",
                isa["block_matmul"].as_str().unwrap_or(""),
                isa["fused"].as_str().unwrap_or("")
            ),
        ),
        ("model", text("model")),
        ("quant", text("quant")),
        (
            "kv cache",
            format!(
                "{}, {:.1} KB per token",
                text("kv_cache"),
                number("kv_cache_bytes_per_token") / 1e3
            ),
        ),
        (
            "weights",
            format!(
                "{file}, {:.1} MB in memory",
                number("weight_memory_bytes") / 1e6
            ),
        ),
        ("threads", report["threads"].to_string()),
        ("load", seconds("load_s")),
        ("preprocess", seconds("preprocess_s")),
        (
            "vision",
            format!(
                "{} ({} image tokens)",
                seconds("vision_s"),
                report["image_tokens"]
            ),
        ),
        ("projector", seconds("projector_s")),
        (
            "prefill",
            format!(
                "{} ({} tokens, {:.1} tok/s)",
                seconds("prefill_s"),
                report["prefill_tokens"],
                number("prefill_tok_s")
            ),
        ),
        ("time to first token", seconds("ttft_s")),
        (
            "decode",
            format!(
                "{:.2} tok/s after the prompt, {:.2} tok/s after {SHORT_PROMPT_TOKENS} tokens \
                 (ratio {:.2})",
                number("decode_tok_s"),
                number("short_context_decode_tok_s"),
                number("long_to_short_decode")
            ),
        ),
        (
            "weights per token",
            format!("{:.1} MB", number("weight_bytes_per_token") / 1e6),
        ),
        (
            "memory bandwidth",
            format!(
                "{:.1} GB/s: decode bound {:.2} tok/s, reached {:.0}%",
                number("bandwidth_gb_s"),
                number("bandwidth_bound_tok_s"),
                100.0 * number("decode_fraction_of_bound")
            ),
        ),
        (
            "peak memory",
            format!("{:.2} GB", number("peak_rss_bytes") / 1e9),
        ),
    ];
    let constrained = &report["constrained"];
    let constrained_row = constrained.is_object().then(|| {
        let number = |key: &str| constrained[key].as_f64().unwrap_or(f64::NAN);
        (
            "constrained decode",
            format!(
                "{:.2} tok/s over {:.0} tokens ({:.2} of the free decode)",
                number("decode_tok_s"),
                number("tokens"),
                number("to_free_decode")
            ),
        )
    });
    for (label, value) in rows.into_iter().chain(constrained_row) {
        println!("{label:<20} {value}");
    }
    println!(
        "(medians of {} runs after a warm-up)",
        report["repeat"].as_u64().unwrap_or(0)
    );
}
