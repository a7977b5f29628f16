//! `imp train export-reference`: the same run for the MILVLG/imp PyTorch + DeepSpeed scripts,
//! for training beyond one machine. It writes the data as one LLaVA JSON list and `train.sh`,
//! the reference's `deepspeed imp_llava/train/train.py` command with this run's recipe, so
//! both trainers see the same samples, template and hyper-parameters. Their output folder
//! (`adapter_model.bin`, `non_lora_trainables.bin`) merges back with `imp train merge`.

use std::fmt::Write;
use std::fs;
use std::path::{Path, PathBuf};

use imp::config::{AspectMode, Family, ImpConfig};

use crate::data::{self, Role};
use crate::run::{Stage, TrainOptions};
use crate::{Error, Result};

/// The reference's `--version` for a stage and family.
fn version(stage: Stage, family: Family) -> &'static str {
    match (stage, family) {
        (Stage::Projector, _) => "plain",
        (Stage::Lora, Family::Phi2) => "phi2",
        (Stage::Lora, Family::Qwen2) => "qwen1.5",
        (Stage::Lora, Family::Phi3) => "phi3",
    }
}

/// Writes `data.json` and `train.sh` into `out` for `gpus` devices, and returns their paths.
pub fn export_reference(options: &TrainOptions, gpus: usize, out: &Path) -> Result<Vec<PathBuf>> {
    if gpus == 0 || options.micro_batch == 0 {
        return Err(Error::InvalidArgument(
            "--gpus and --micro-batch must be at least 1".into(),
        ));
    }
    let per_step = options.micro_batch * gpus;
    if !options.global_batch.is_multiple_of(per_step) {
        return Err(Error::InvalidArgument(format!(
            "--global-batch {} is not a multiple of --micro-batch {} x --gpus {gpus}",
            options.global_batch, options.micro_batch
        )));
    }
    let source = imp::checkpoint::open(&options.model)?;
    let config = ImpConfig::load(&source.config_files()?, source.as_ref())?;
    let samples = data::read(&options.data)?;
    if out.exists() && fs::read_dir(out).map_err(io(out))?.next().is_some() {
        return Err(Error::InvalidArgument(format!(
            "--out {} already holds files; choose an empty or new folder",
            out.display()
        )));
    }
    fs::create_dir_all(out).map_err(io(out))?;

    let json: Vec<serde_json::Value> = samples
        .iter()
        .map(|sample| {
            let turns: Vec<serde_json::Value> = sample
                .conversations
                .iter()
                .map(|turn| {
                    let from = match turn.from {
                        Role::Human => "human",
                        Role::Gpt => "gpt",
                    };
                    serde_json::json!({"from": from, "value": turn.value})
                })
                .collect();
            let mut value = serde_json::json!({"id": sample.id, "conversations": turns});
            if let Some(image) = &sample.image {
                value["image"] = image.clone().into();
            }
            value
        })
        .collect();
    let data_path = out.join("data.json");
    let text =
        serde_json::to_string_pretty(&json).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    fs::write(&data_path, text).map_err(io(&data_path))?;

    let script_path = out.join("train.sh");
    fs::write(&script_path, script(options, &config, gpus)).map_err(io(&script_path))?;
    Ok(vec![data_path, script_path])
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |error| Error::Io { path, error }
}

fn script(options: &TrainOptions, config: &ImpConfig, gpus: usize) -> String {
    let accumulation = options.global_batch / (options.micro_batch * gpus);
    let aspect = match options.aspect.unwrap_or(config.aspect) {
        AspectMode::Squash => "square",
        AspectMode::Pad => "pad",
    };
    let mut args: Vec<(String, String)> = Vec::new();
    let mut arg = |key: &str, value: String| args.push((key.to_owned(), value));
    arg("--deepspeed", "./scripts/zero3.json".into());
    // The script runs from the reference's checkout: every path absolute.
    let absolute = |path: &Path| {
        std::path::absolute(path)
            .unwrap_or_else(|_| path.to_path_buf())
            .display()
            .to_string()
    };
    arg("--model_name_or_path", absolute(&options.model));
    arg(
        "--version",
        version(options.stage, config.decoder.family).into(),
    );
    arg("--data_path", "$(dirname \"$0\")/data.json".into());
    arg("--image_folder", absolute(&options.image_folder));
    arg("--vision_tower", "google/siglip-so400m-patch14-384".into());
    arg("--mm_projector_type", "mlp2x_gelu".into());
    arg("--mm_vision_select_layer", "-2".into());
    arg("--mm_use_im_start_end", "False".into());
    arg("--mm_use_im_patch_token", "False".into());
    arg("--image_aspect_ratio", aspect.into());
    match options.stage {
        Stage::Projector => {
            arg("--tune_mm_mlp_adapter", "True".into());
        }
        Stage::Lora => {
            arg("--lora_enable", "True".into());
            arg("--lora_r", options.lora.r.to_string());
            arg("--lora_alpha", options.lora.alpha.to_string());
            arg("--mm_projector_lr", options.projector_lr.to_string());
            if let Some(projector) = &options.init_projector {
                arg("--pretrain_mm_mlp_adapter", absolute(projector));
            }
        }
    }
    arg("--fp16", "True".into());
    arg("--output_dir", "./checkpoints/imp-export".into());
    arg("--num_train_epochs", options.epochs.to_string());
    arg(
        "--per_device_train_batch_size",
        options.micro_batch.to_string(),
    );
    arg("--gradient_accumulation_steps", accumulation.to_string());
    arg("--learning_rate", options.lr.to_string());
    arg("--weight_decay", options.weight_decay.to_string());
    arg("--warmup_ratio", options.warmup_ratio.to_string());
    // transformers' plain `constant` ignores the warmup.
    let scheduler = match options.scheduler {
        crate::schedule::Scheduler::Constant if options.warmup_ratio > 0.0 => {
            "constant_with_warmup".to_owned()
        }
        other => other.to_string(),
    };
    arg("--lr_scheduler_type", scheduler);
    arg("--model_max_length", options.max_len.to_string());
    arg("--gradient_checkpointing", "True".into());
    arg("--logging_steps", "1".into());
    arg("--seed", options.seed.to_string());
    let mut script = String::from(
        "#!/usr/bin/env bash\n\
         # Written by `imp train export-reference`: this run for MILVLG/imp's scripts. Run from a\n\
         # checkout of https://github.com/MILVLG/imp with its requirements installed.\n",
    );
    if options.lora.targets.iter().any(|t| !t.is_empty()) || !options.lora.lm_head {
        script.push_str(
            "# Note: the reference adapts every linear layer and lm_head; the LoRA target\n\
             # selection of this run has no flag there.\n",
        );
    }
    let _ = writeln!(
        script,
        "set -e\ndeepspeed --num_gpus {gpus} imp_llava/train/train.py \\"
    );
    for (i, (key, value)) in args.iter().enumerate() {
        let end = if i + 1 == args.len() { "" } else { " \\" };
        let value = if value.contains("$(") {
            format!("\"{value}\"")
        } else {
            shell_quote(value)
        };
        let _ = writeln!(script, "    {key} {value}{end}");
    }
    script
}

fn shell_quote(value: &str) -> String {
    if value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./:=+".contains(c))
    {
        value.to_owned()
    } else {
        format!("'{}'", value.replace('\'', "'\\''"))
    }
}
