//! `imp eval`: answer the Imp paper's benchmarks the way the reference evaluation does, score the
//! answers with each benchmark's official rules, merge shards and compare runs.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use imp::files::{check_output, Overwrite};
use imp_tools::eval::answers::{merge, Shard};
use imp_tools::eval::prompts::load_questions;
use imp_tools::eval::report::{read_reports, Comparison};
use imp_tools::eval::run::{check_images, model_answerer, run as run_questions, RunOptions};
use imp_tools::eval::score::{score, ScoreInputs};
use imp_tools::eval::Benchmark;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Subcommand)]
pub enum EvalCommand {
    /// Answer a benchmark's questions; a rerun resumes where an interrupted one stopped.
    Run(RunArgs),
    /// Score an answer file with the benchmark's official rules.
    Score(ScoreArgs),
    /// Concatenate the answer files of a sharded run.
    Merge(MergeArgs),
    /// Compare scored runs side by side and draw a bar chart.
    Report(ReportArgs),
}

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    model: crate::ModelArgs,
    /// pope, scienceqa, textvqa, vqav2, vizwiz, gqa, mme, mmbench or mmvet.
    #[arg(long, value_parser = parse_benchmark)]
    benchmark: Benchmark,
    /// The benchmark's question file in LLaVA's format (llava_pope_test.jsonl,
    /// llava_test_CQM-A.json, mmbench_dev_20230712.tsv, ...).
    #[arg(long)]
    questions: PathBuf,
    /// Folder the questions' `image` fields are relative to (MMBench embeds its images).
    #[arg(long, default_value = ".")]
    images: PathBuf,
    /// Answer file (LLaVA's JSON Lines); existing answers are kept and skipped.
    #[arg(long)]
    out: PathBuf,
    /// Answer only part I of N (0-based, LLaVA's --chunk-idx / --num-chunks split); merge the
    /// parts with `imp eval merge`.
    #[arg(long, value_parser = parse_shard, default_value = "0/1")]
    shard: Shard,
    /// Default: the reference scripts' budget (128; 1024 for scienceqa, mmbench and mmvet).
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// `model_id` written into the answers (default: the model folder's name).
    #[arg(long)]
    model_id: Option<String>,
}

#[derive(Args)]
pub struct ScoreArgs {
    /// pope, scienceqa, textvqa, vqav2, vizwiz, gqa, mme, mmbench or mmvet.
    #[arg(long, value_parser = parse_benchmark)]
    benchmark: Benchmark,
    /// The answer file (LLaVA's JSON Lines, or the result file of eval_science_qa.py).
    #[arg(long)]
    answers: PathBuf,
    /// The question file the run answered (needed for pope, scienceqa, vizwiz, mmbench and
    /// submissions; elsewhere it checks that every question is answered).
    #[arg(long)]
    questions: Option<PathBuf>,
    /// Ground truth: POPE's coco_pope_<split>.json files, TextVQA_0.5.1_val.json, a VQAv2 or
    /// VizWiz annotation file, GQA's testdev_balanced_questions.json, or MME's
    /// MME_Benchmark_release_version folder.
    #[arg(long, num_args = 1..)]
    annotations: Vec<PathBuf>,
    /// Write the server submission (VQAv2 / VizWiz JSON, GQA predictions, MMBench .xlsx) or the
    /// MM-Vet grader input to this file.
    #[arg(long)]
    submission: Option<PathBuf>,
    /// Name of this run in reports (default: the answers' model_id).
    #[arg(long)]
    label: Option<String>,
    /// Also save the scores as JSON (the input of `imp eval report`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the scores as JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Replace `--out` and `--submission` if they exist.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
pub struct MergeArgs {
    /// The merged answer file.
    #[arg(long)]
    out: PathBuf,
    /// Shard answer files, in order.
    #[arg(required = true)]
    shards: Vec<PathBuf>,
    /// Replace `--out` if it exists.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
pub struct ReportArgs {
    /// Score files written by `imp eval score --out` (or its --json output).
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// Where to write the bar chart.
    #[arg(long, default_value = "eval-report.png")]
    chart: PathBuf,
    /// Replace `--chart` if it exists.
    #[arg(long)]
    force: bool,
}

fn parse_benchmark(s: &str) -> Result<Benchmark, String> {
    s.parse().map_err(|e: imp_tools::Error| e.to_string())
}

fn parse_shard(s: &str) -> Result<Shard, String> {
    s.parse().map_err(|e: imp_tools::Error| e.to_string())
}

pub fn run(command: EvalCommand) -> Result<()> {
    match command {
        EvalCommand::Run(args) => eval_run(args),
        EvalCommand::Score(args) => eval_score(args),
        EvalCommand::Merge(args) => {
            let count = merge(&args.shards, &args.out, Overwrite::forced(args.force))?;
            eprintln!("merged {count} answers into {}", args.out.display());
            Ok(())
        }
        EvalCommand::Report(args) => {
            let comparison = Comparison::new(&read_reports(&args.runs)?)?;
            print!("{}", comparison.to_text());
            comparison.write_chart(&args.chart, Overwrite::forced(args.force))?;
            eprintln!("chart written to {}", args.chart.display());
            Ok(())
        }
    }
}

fn eval_run(args: RunArgs) -> Result<()> {
    let questions = load_questions(args.benchmark, &args.questions)?;
    // Fail on a missing image before the (slow) model load.
    let shard = &questions[args.shard.range(questions.len())];
    check_images(shard, &args.questions, &args.images)?;
    let model_id = args
        .model_id
        .clone()
        .unwrap_or_else(|| model_name(&args.model.model));
    let model = crate::load(&args.model)?;
    let max_new_tokens = args
        .max_new_tokens
        .unwrap_or(args.benchmark.default_max_new_tokens());
    let bar = ProgressBar::new(shard.len() as u64).with_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {pos}/{len} questions, {elapsed_precise} elapsed, ETA {eta_precise}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message(format!("{} shard {}", args.benchmark, args.shard));
    let mut first = true;
    let done = run_questions(
        &questions,
        &args.questions,
        &args.images,
        &args.out,
        &RunOptions {
            model_id,
            shard: args.shard,
        },
        &mut model_answerer(&model, max_new_tokens),
        &mut |progress| {
            bar.set_position(progress.done as u64);
            if first {
                // Answers found in the file took no time now: keep them out of the ETA.
                bar.reset_eta();
                first = false;
            }
        },
    )
    .with_context(|| format!("answering into {}", args.out.display()))?;
    bar.finish();
    eprintln!(
        "{} answers in {} ({} were already there)",
        done.done,
        args.out.display(),
        done.resumed
    );
    Ok(())
}

fn eval_score(args: ScoreArgs) -> Result<()> {
    if let Some(out) = &args.out {
        // Before scoring, so that a refused --out costs nothing.
        let mut read: Vec<&Path> = vec![&args.answers];
        read.extend(args.questions.as_deref());
        read.extend(args.annotations.iter().map(PathBuf::as_path));
        check_output(out, &read, Overwrite::forced(args.force))?;
    }
    let report = score(&ScoreInputs {
        benchmark: args.benchmark,
        answers: &args.answers,
        questions: args.questions.as_deref(),
        annotations: &args.annotations,
        submission: args.submission.as_deref(),
        label: args.label,
        overwrite: Overwrite::forced(args.force),
    })?;
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(out) = &args.out {
        imp::files::write(out, json.as_bytes(), Overwrite::forced(args.force))?;
    }
    if args.json {
        println!("{json}");
    } else {
        print!("{}", report.to_text());
    }
    Ok(())
}

/// LLaVA's `get_model_name_from_path`: the last path component, with its parent prefixed for
/// `checkpoint-N` folders.
fn model_name(spec: &str) -> String {
    let parts: Vec<&str> = Path::new(spec.trim_end_matches('/'))
        .iter()
        .filter_map(|p| p.to_str())
        .collect();
    match parts.as_slice() {
        [.., parent, last] if last.starts_with("checkpoint-") => format!("{parent}_{last}"),
        [.., last] => (*last).to_owned(),
        [] => spec.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_follow_llava() {
        assert_eq!(model_name("MILVLG/Imp-v1.5-3B-196"), "Imp-v1.5-3B-196");
        assert_eq!(model_name("/models/imp-v1-3b/"), "imp-v1-3b");
        assert_eq!(
            model_name("runs/lora/checkpoint-500"),
            "lora_checkpoint-500"
        );
    }
}
