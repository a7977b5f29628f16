//! One entry point for scoring any benchmark: which inputs each one needs, the metrics the
//! papers report (first the headline), the full details, and the submission or grader files
//! for benchmarks scored elsewhere.

use std::path::{Path, PathBuf};

use imp::files::{check_output, Overwrite};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::answers::{match_answers, read_answers, AnswerLine};
use super::files::tsv_header;
use super::prompts::load_questions;
use super::question::Question;
use super::vqa::VqaScore;
use super::{gqa, mmbench, mme, mmvet, pope, scienceqa, vqa, Benchmark};
use crate::{Error, Result};

/// What `imp eval score` was given.
#[derive(Clone, Debug)]
pub struct ScoreInputs<'a> {
    pub benchmark: Benchmark,
    pub answers: &'a Path,
    /// The question file the run used (needed by POPE, ScienceQA, VizWiz, MMBench and for
    /// submission files; optional elsewhere, where it checks that every question is answered).
    pub questions: Option<&'a Path>,
    /// Ground truth: POPE's label files, TextVQA / VQAv2 / VizWiz / GQA annotation files, or
    /// MME's benchmark folder.
    pub annotations: &'a [PathBuf],
    /// Where to write the submission (VQAv2, VizWiz, GQA predictions, MMBench `.xlsx`) or, for
    /// MM-Vet, the grader input.
    pub submission: Option<&'a Path>,
    /// Column name in reports; defaults to the answers' `model_id`.
    pub label: Option<String>,
    /// Whether an existing submission file may be replaced.
    pub overwrite: Overwrite,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    pub name: String,
    pub value: f64,
}

fn metric(name: &str, value: f64) -> Metric {
    Metric {
        name: name.to_owned(),
        value,
    }
}

/// A scored run, as `imp eval score --json` prints it and `imp eval report` reads it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScoreReport {
    pub benchmark: String,
    pub label: String,
    pub answers: PathBuf,
    /// The numbers the papers' tables report, headline first (percent; MME in points).
    /// Empty for benchmarks scored by a server or judge.
    pub metrics: Vec<Metric>,
    pub details: Value,
    pub submission: Option<PathBuf>,
    pub notes: Vec<String>,
}

pub fn score(inputs: &ScoreInputs) -> Result<ScoreReport> {
    if let Some(out) = inputs.submission {
        let mut read: Vec<&Path> = vec![inputs.answers];
        read.extend(inputs.questions);
        read.extend(inputs.annotations.iter().map(PathBuf::as_path));
        check_output(out, &read, inputs.overwrite)?;
    }
    let answers = read_answers(inputs.answers)?;
    let label = inputs.label.clone().unwrap_or_else(|| {
        answers
            .iter()
            .map(|a| a.model_id.clone())
            .find(|m| !m.is_empty())
            .or_else(|| {
                let stem = inputs.answers.file_stem()?;
                Some(stem.to_string_lossy().into_owned())
            })
            .unwrap_or_default()
    });
    let mut report = ScoreReport {
        benchmark: inputs.benchmark.name().to_owned(),
        label,
        answers: inputs.answers.to_path_buf(),
        metrics: Vec::new(),
        details: Value::Null,
        submission: inputs.submission.map(Path::to_path_buf),
        notes: Vec::new(),
    };
    scorer(inputs.benchmark)(inputs, &answers, &mut report)?;
    Ok(report)
}

/// Scores one benchmark into `report`: its metrics (headline first), details, notes and
/// submission file.
type Scorer = fn(&ScoreInputs, &[AnswerLine], &mut ScoreReport) -> Result<()>;

fn scorer(benchmark: Benchmark) -> Scorer {
    match benchmark {
        Benchmark::Pope => score_pope,
        Benchmark::ScienceQa => score_scienceqa,
        Benchmark::TextVqa => score_textvqa,
        Benchmark::VqaV2 => score_vqav2,
        Benchmark::VizWiz => score_vizwiz,
        Benchmark::Gqa => score_gqa,
        Benchmark::Mme => score_mme,
        Benchmark::MmBench => score_mmbench,
        Benchmark::MmVet => score_mmvet,
    }
}

fn score_pope(
    inputs: &ScoreInputs,
    answers: &[AnswerLine],
    report: &mut ScoreReport,
) -> Result<()> {
    let (q_path, questions) = questions(inputs)?;
    let s = pope::score(
        &questions,
        q_path,
        answers,
        inputs.answers,
        inputs.annotations,
    )?;
    report.metrics = vec![metric("F1 (avg)", s.f1_average)];
    report.metrics.extend(
        s.splits
            .iter()
            .map(|split| metric(&format!("F1 {}", split.split), split.f1)),
    );
    report
        .metrics
        .push(metric("accuracy (avg)", s.accuracy_average));
    report.details = to_value(&s);
    Ok(())
}

fn score_scienceqa(
    inputs: &ScoreInputs,
    answers: &[AnswerLine],
    report: &mut ScoreReport,
) -> Result<()> {
    let (q_path, questions) = questions(inputs)?;
    let s = scienceqa::score(&questions, q_path, answers, inputs.answers)?;
    report.metrics = vec![
        metric("IMG accuracy", s.image_accuracy),
        metric("accuracy", s.accuracy),
    ];
    report.details = to_value(&s);
    Ok(())
}

fn score_textvqa(
    inputs: &ScoreInputs,
    answers: &[AnswerLine],
    report: &mut ScoreReport,
) -> Result<()> {
    check_complete(inputs, answers)?;
    let s = vqa::score_textvqa(answers, inputs.answers, one_annotation(inputs)?)?;
    report.metrics = vec![metric("accuracy", s.accuracy)];
    report.details = to_value(&s);
    Ok(())
}

fn score_vqav2(
    inputs: &ScoreInputs,
    answers: &[AnswerLine],
    report: &mut ScoreReport,
) -> Result<()> {
    score_evalai(
        inputs,
        answers,
        report,
        vqav2_accuracy,
        vqa::vqav2_submission,
    )
}

fn score_vizwiz(
    inputs: &ScoreInputs,
    answers: &[AnswerLine],
    report: &mut ScoreReport,
) -> Result<()> {
    score_evalai(
        inputs,
        answers,
        report,
        vizwiz_accuracy,
        vqa::vizwiz_submission,
    )
}

fn vqav2_accuracy(inputs: &ScoreInputs, answers: &[AnswerLine], truth: &Path) -> Result<VqaScore> {
    check_complete(inputs, answers)?;
    vqa::score_vqav2(answers, inputs.answers, truth)
}

fn vizwiz_accuracy(inputs: &ScoreInputs, answers: &[AnswerLine], truth: &Path) -> Result<VqaScore> {
    let (q_path, questions) = questions(inputs)?;
    vqa::score_vizwiz(&questions, q_path, answers, inputs.answers, truth)
}

/// VQAv2 and VizWiz: a val split is scored here against its annotations, a test split is
/// scored by EvalAI from the upload written here; either or both.
fn score_evalai(
    inputs: &ScoreInputs,
    answers: &[AnswerLine],
    report: &mut ScoreReport,
    accuracy: fn(&ScoreInputs, &[AnswerLine], &Path) -> Result<VqaScore>,
    upload: fn(&[Question], &Path, &[AnswerLine], &Path) -> Result<Value>,
) -> Result<()> {
    if inputs.annotations.is_empty() && inputs.submission.is_none() {
        return Err(Error::InvalidArgument(format!(
            "{}: give --annotations (a val split's annotation file) to score, or \
             --submission FILE to write the EvalAI upload of a test split",
            inputs.benchmark
        )));
    }
    if !inputs.annotations.is_empty() {
        let s = accuracy(inputs, answers, one_annotation(inputs)?)?;
        report.metrics = vec![metric("accuracy", s.accuracy)];
        report.metrics.extend(
            s.by_answer_type
                .iter()
                .map(|(t, v)| metric(&format!("accuracy {t}"), *v)),
        );
        report.details = to_value(&s);
    }
    if let Some(out) = inputs.submission {
        let (q_path, questions) = questions(inputs)?;
        write(
            inputs,
            out,
            &upload(&questions, q_path, answers, inputs.answers)?.to_string(),
        )?;
        report
            .notes
            .push(format!("EvalAI upload written to {}", out.display()));
    }
    Ok(())
}

fn score_gqa(inputs: &ScoreInputs, answers: &[AnswerLine], report: &mut ScoreReport) -> Result<()> {
    check_complete(inputs, answers)?;
    let s = gqa::score(answers, inputs.answers, one_annotation(inputs)?)?;
    report.metrics = vec![
        metric("accuracy", s.accuracy),
        metric("binary", s.binary),
        metric("open", s.open),
    ];
    report.details = to_value(&s);
    if let Some(out) = inputs.submission {
        write(inputs, out, &gqa::predictions_file(answers).to_string())?;
        report.notes.push(format!(
            "predictions for GQA's eval.py written to {}",
            out.display()
        ));
    }
    Ok(())
}

fn score_mme(inputs: &ScoreInputs, answers: &[AnswerLine], report: &mut ScoreReport) -> Result<()> {
    check_complete(inputs, answers)?;
    let s = mme::score(answers, inputs.answers, one_annotation(inputs)?)?;
    report.metrics = vec![
        metric("perception", s.perception),
        metric("cognition", s.cognition),
    ];
    report.details = to_value(&s);
    Ok(())
}

/// A dev split (with an `answer` column) is scored here; a test split only gets the upload.
fn score_mmbench(
    inputs: &ScoreInputs,
    answers: &[AnswerLine],
    report: &mut ScoreReport,
) -> Result<()> {
    let (q_path, questions) = questions(inputs)?;
    let has_answers = questions.iter().any(|q| q.record.contains_key("answer"));
    if has_answers {
        let s = mmbench::score(&questions, q_path, answers, inputs.answers)?;
        report.metrics = vec![
            metric("circular accuracy", s.circular_accuracy),
            metric("vanilla accuracy", s.vanilla_accuracy),
        ];
        if s.unparsed > 0 {
            report.notes.push(format!(
                "{} answers are not an option letter and count as wrong (the reference \
                 would ask a ChatGPT judge)",
                s.unparsed
            ));
        }
        report.details = to_value(&s);
    }
    match inputs.submission {
        Some(out) => {
            let header = tsv_header(q_path)?;
            mmbench::write_submission(
                &questions,
                q_path,
                &header,
                answers,
                inputs.answers,
                out,
                inputs.overwrite,
            )?;
            report
                .notes
                .push(format!("OpenCompass upload written to {}", out.display()));
            Ok(())
        }
        None if !has_answers => Err(Error::InvalidArgument(format!(
            "{} has no `answer` column (a test split): give --submission FILE.xlsx \
             to write the OpenCompass upload",
            q_path.display()
        ))),
        None => Ok(()),
    }
}

fn score_mmvet(
    inputs: &ScoreInputs,
    answers: &[AnswerLine],
    report: &mut ScoreReport,
) -> Result<()> {
    check_complete(inputs, answers)?;
    let out = inputs.submission.ok_or_else(|| {
        Error::InvalidArgument(
            "mmvet is graded by MM-Vet's GPT-4 grader: give --submission FILE.json to \
             write its input"
                .into(),
        )
    })?;
    write(inputs, out, &mmvet::grader_input(answers))?;
    report.notes.push(format!(
        "grader input written to {}; grade it with MM-Vet's official grader",
        out.display()
    ));
    Ok(())
}

fn questions<'a>(inputs: &ScoreInputs<'a>) -> Result<(&'a Path, Vec<Question>)> {
    let path = inputs.questions.ok_or_else(|| {
        Error::InvalidArgument(format!(
            "{} needs --questions (the question file the run answered)",
            inputs.benchmark
        ))
    })?;
    Ok((path, load_questions(inputs.benchmark, path)?))
}

/// With a question file, every question must be answered and every answer belong to one.
fn check_complete(inputs: &ScoreInputs, answers: &[AnswerLine]) -> Result<()> {
    if inputs.questions.is_some() {
        let (path, questions) = questions(inputs)?;
        match_answers(&questions, path, answers, inputs.answers)?;
    }
    Ok(())
}

fn one_annotation<'a>(inputs: &ScoreInputs<'a>) -> Result<&'a Path> {
    let expected = match inputs.benchmark {
        Benchmark::TextVqa => "TextVQA_0.5.1_val.json",
        Benchmark::VqaV2 => "the VQAv2 annotation file (v2_mscoco_val2014_annotations.json)",
        Benchmark::VizWiz => "VizWiz's val.json",
        Benchmark::Gqa => "testdev_balanced_questions.json",
        Benchmark::Mme => "the MME_Benchmark_release_version folder",
        _ => "one annotation file",
    };
    match inputs.annotations {
        [one] => Ok(one),
        _ => Err(Error::InvalidArgument(format!(
            "{} needs exactly one --annotations: {expected}",
            inputs.benchmark
        ))),
    }
}

fn write(inputs: &ScoreInputs, path: &Path, text: &str) -> Result<()> {
    Ok(imp::files::write(path, text.as_bytes(), inputs.overwrite)?)
}

fn to_value(value: &impl Serialize) -> Value {
    serde_json::to_value(value).expect("scores serialise")
}

impl ScoreReport {
    /// A plain-text rendering: the metrics, then every detail as `path: value`.
    pub fn to_text(&self) -> String {
        let mut text = format!("{} — {}\n", self.benchmark, self.label);
        for m in &self.metrics {
            text.push_str(&format!("  {:<28} {:>9.2}\n", m.name, m.value));
        }
        let mut details = Vec::new();
        flatten(&self.details, String::new(), &mut details);
        if !details.is_empty() {
            text.push_str("details:\n");
            for (key, value) in details {
                text.push_str(&format!("  {key}: {value}\n"));
            }
        }
        for note in &self.notes {
            text.push_str(&format!("note: {note}\n"));
        }
        text
    }
}

/// `a.b: value` lines; array elements are named by their `split` or `name` field.
fn flatten(value: &Value, prefix: String, out: &mut Vec<(String, String)>) {
    let join = |key: &str| {
        if prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{prefix}.{key}")
        }
    };
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                flatten(v, join(key), out);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let name = ["split", "name"]
                    .iter()
                    .find_map(|k| item.get(k).and_then(Value::as_str))
                    .map_or_else(|| i.to_string(), str::to_owned);
                let inner = match item {
                    Value::Object(map) => Value::Object(
                        map.iter()
                            .filter(|(k, _)| !matches!(k.as_str(), "split" | "name"))
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                    ),
                    other => other.clone(),
                };
                flatten(&inner, join(&name), out);
            }
        }
        Value::Null => {}
        Value::Number(n) if n.is_f64() => {
            out.push((prefix, format!("{:.2}", n.as_f64().unwrap_or(0.0))))
        }
        other => out.push((prefix, other.to_string())),
    }
}
