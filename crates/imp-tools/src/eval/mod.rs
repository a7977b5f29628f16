//! The benchmarks of the Imp paper, run and scored the way LLaVA-1.5's evaluation suite (which
//! Imp follows, imp: docs/Evaluation.md) does it.
//!
//! [`prompts`] reads a benchmark's question file (LLaVA's formats) into [`question`]s and builds
//! each prompt as the reference scripts do; [`run`] answers them with any answerer, appending LLaVA-format lines
//! ([`answers`]) so that an interrupted run resumes and shards merge. Scoring follows each
//! benchmark's official rules: [`pope`], [`scienceqa`], [`vqa`] (TextVQA, VQAv2, VizWiz with
//! the EvalAI normalisation of [`answer_norm`]), [`gqa`], [`mme`], [`mmbench`] and [`mmvet`]
//! (grader input only); [`score`] dispatches and [`report`] compares scored runs.

pub mod answer_norm;
pub mod answers;
pub mod files;
pub mod gqa;
pub mod mmbench;
pub mod mme;
pub mod mmvet;
pub mod pope;
pub mod prompts;
pub mod question;
pub mod report;
pub mod run;
pub mod scienceqa;
pub mod score;
pub mod vqa;

mod font;

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use crate::{Error, Result};

/// The benchmarks of the Imp and LLaVA-1.5 tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Benchmark {
    Pope,
    ScienceQa,
    TextVqa,
    VqaV2,
    VizWiz,
    Gqa,
    Mme,
    MmBench,
    MmVet,
}

impl Benchmark {
    pub const ALL: [Benchmark; 9] = [
        Self::Pope,
        Self::ScienceQa,
        Self::TextVqa,
        Self::VqaV2,
        Self::VizWiz,
        Self::Gqa,
        Self::Mme,
        Self::MmBench,
        Self::MmVet,
    ];

    /// The name used on the command line and in score files.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pope => "pope",
            Self::ScienceQa => "scienceqa",
            Self::TextVqa => "textvqa",
            Self::VqaV2 => "vqav2",
            Self::VizWiz => "vizwiz",
            Self::Gqa => "gqa",
            Self::Mme => "mme",
            Self::MmBench => "mmbench",
            Self::MmVet => "mmvet",
        }
    }

    /// The generation budget of the reference scripts: `model_vqa_loader.py` answers short
    /// questions with 128 new tokens; ScienceQA, MMBench and MM-Vet go through scripts that
    /// allow 1024.
    pub fn default_max_new_tokens(self) -> usize {
        match self {
            Self::ScienceQa | Self::MmBench | Self::MmVet => 1024,
            _ => 128,
        }
    }
}

impl fmt::Display for Benchmark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Benchmark {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let wanted = s.to_ascii_lowercase().replace(['-', '_'], "");
        let alias = match wanted.as_str() {
            "sqa" | "scienceqaimg" => "scienceqa",
            "vqa" => "vqav2",
            other => other,
        };
        Self::ALL
            .into_iter()
            .find(|b| b.name() == alias)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|b| b.name()).collect();
                Error::InvalidArgument(format!(
                    "unknown benchmark `{s}`; expected one of {}",
                    names.join(", ")
                ))
            })
    }
}

/// An error about one line of an input file.
pub(crate) fn error_at(path: &Path, line: usize, message: impl Into<String>) -> Error {
    Error::AtLine {
        path: path.to_path_buf(),
        line,
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn benchmark_names_round_trip_and_unknown_names_are_refused() {
        for b in Benchmark::ALL {
            assert_eq!(b.name().parse::<Benchmark>().unwrap(), b);
        }
        assert_eq!("MM-Vet".parse::<Benchmark>().unwrap(), Benchmark::MmVet);
        assert_eq!("sqa".parse::<Benchmark>().unwrap(), Benchmark::ScienceQa);
        let err = "coco".parse::<Benchmark>().unwrap_err().to_string();
        assert!(err.contains("unknown benchmark `coco`"), "{err}");
        assert!(err.contains("pope"), "{err}");
    }
}
