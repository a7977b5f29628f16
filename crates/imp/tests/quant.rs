//! Quantization on the tiny fixture models, whose widths (8-12) are never whole GGML blocks, so
//! the zero-padding path runs everywhere: a GGUF file from `imp quantize` gives exactly the model
//! that quantizing at load gives, q8_0 stays with the f32 reference, and bad input fails clearly.

use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use imp::files::Overwrite;
use imp::quant::{self, Part, Quantization};
use imp::quantize;
use imp::{Generation, ImpModel, LoadOptions};

use crate::support::{self, expected, model_dir, MODELS};

const FORMATS: [&str; 7] = ["f32", "f16", "bf16", "q8_0", "q6_k", "q4_k", "q4_0"];

fn quantized(quantization: Quantization) -> LoadOptions {
    LoadOptions {
        quantization,
        ..Default::default()
    }
}

fn load(path: &Path, quantization: Quantization) -> ImpModel {
    support::load(path, &quantized(quantization))
}

fn load_err(path: &Path, quantization: Quantization) -> String {
    support::load_err(path, &quantized(quantization))
}

fn answer(model: &ImpModel, name: &str) -> Generation {
    support::answer(model, name, &mut |_| {})
}

fn write_gguf(name: &str, plan: &Quantization, out: &Path) {
    quantize::write_gguf(
        &model_dir(name),
        plan,
        out,
        Overwrite::Refuse,
        &mut |_, _, _| {},
    )
    .unwrap_or_else(|e| panic!("{name}: {e}"));
}

/// Quantizing at load and loading the GGUF file give bit-identical answers and weight reports.
fn round_trip(plan: Quantization) {
    let dir = tempfile::tempdir().unwrap();
    for (name, _) in MODELS {
        let in_situ = load(&model_dir(name), plan);
        let file = dir.path().join(format!("{name}.gguf"));
        write_gguf(name, &plan, &file);
        let from_file = load(&file, Quantization::default());
        let (a, b) = (answer(&in_situ, name), answer(&from_file, name));
        assert_eq!(a.tokens, b.tokens, "{name} {plan}: tokens");
        assert_eq!(a.top_logprobs, b.top_logprobs, "{name} {plan}: logprobs");
        assert_eq!(a.text, b.text, "{name} {plan}: text");
        assert_eq!(
            in_situ.info().weights,
            from_file.info().weights,
            "{name} {plan}: weight groups"
        );
        assert_eq!(in_situ.stop_token_ids(), from_file.stop_token_ids());
        assert_eq!(in_situ.image_tokens(), from_file.image_tokens());
    }
}

#[test]
fn every_format_round_trips_through_a_gguf_file() {
    for format in FORMATS {
        round_trip(Quantization::all(quant::parse_format(format).unwrap()));
    }
}

#[test]
fn mixed_plan_round_trips_and_reports_every_matrix() {
    let plan = Quantization::from_names(None, Some("q4_k"), Some("q8_0"), Some("f16")).unwrap();
    round_trip(plan);
    for (name, _) in MODELS {
        let model = load(&model_dir(name), plan);
        let groups = &model.info().weights;
        for part in Part::ALL {
            let format = plan.format(part).unwrap();
            let matrices: Vec<_> = groups
                .iter()
                .filter(|g| g.part == part && g.width > 0)
                .collect();
            assert!(!matrices.is_empty(), "{name}: no {part} matrices");
            for group in matrices {
                assert_eq!(
                    group.format,
                    quant::format_name(format),
                    "{name}: {group:?}"
                );
                assert_eq!(group.stored_width % format.block_size(), 0, "{group:?}");
                assert_eq!(group.stored_width, quant::padded_width(group.width, format));
            }
        }
        // Every parameter is accounted for, matrices and the rest.
        let info = model.info();
        let stored: usize = groups.iter().map(|g| g.values).sum();
        assert_eq!(
            stored,
            info.parameters_vision + info.parameters_projector + info.parameters_llm,
            "{name}"
        );
    }
}

/// Largest log-probability margin (nats) by which the f32 reference may prefer its token to
/// the one q8_0 picks: the tiny random models have near-ties that q8_0's rounding can flip.
const NEAR_TIE: f32 = 0.1;

#[test]
fn q8_0_follows_the_f32_reference() {
    let plan = Quantization::all(GgmlDType::Q8_0);
    let (mut matched, mut steps) = (0, 0);
    for (name, _) in MODELS {
        let tokens = answer(&load(&model_dir(name), plan), name).tokens;
        let e = expected(name);
        let same = tokens
            .iter()
            .zip(&e.greedy_tokens)
            .take_while(|(a, b)| a == b)
            .count();
        eprintln!(
            "{name}: q8_0 matches the f32 reference for {same} of {} greedy tokens",
            e.greedy_tokens.len()
        );
        (matched, steps) = (matched + same, steps + e.greedy_tokens.len());
        // Past the first difference the two answers are different texts.
        if let (Some(&ours), Some(top)) = (tokens.get(same), e.top_logprobs.get(same)) {
            let best = top[0].1;
            let margin = top
                .iter()
                .find(|(id, _)| *id == ours)
                .map(|(_, lp)| best - lp);
            assert!(
                margin.is_some_and(|m| m < NEAR_TIE),
                "{name}: step {same} picks {ours}, not a near-tie of the reference's {top:?}"
            );
        }
    }
    eprintln!("q8_0: {matched} of {steps} greedy steps identical to the f32 reference");
}

#[test]
fn unknown_format_names_the_valid_ones() {
    let err = Quantization::from_names(None, Some("q3_x"), None, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("q3_x"), "{err}");
    for format in FORMATS {
        assert!(err.contains(format), "`{err}` should list {format}");
    }
}

#[test]
fn gguf_from_another_program_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("llama.gguf");
    let weight = QTensor::quantize(
        &Tensor::zeros((4, 32), candle_core::DType::F32, &Device::Cpu).unwrap(),
        GgmlDType::Q8_0,
    )
    .unwrap();
    let architecture = Value::String("llama".into());
    let mut file = std::fs::File::create(&path).unwrap();
    gguf_file::write(
        &mut file,
        &[("general.architecture", &architecture)],
        &[("token_embd.weight", &weight)],
    )
    .unwrap();
    let err = load_err(&path, Quantization::default());
    for part in ["llama.gguf", "another program", "`llama`", "imp quantize"] {
        assert!(err.contains(part), "`{err}` should mention {part}");
    }
}

/// A file of Q8_0 tensors [4, 32] with these names and metadata, as candle writes it, and
/// where each one's table entry continues after its name: dimension count, two dimensions,
/// type, data offset.
fn gguf_of(names: &[&str], metadata: &[(&str, &Value)]) -> (Vec<u8>, Vec<usize>) {
    let weight = QTensor::quantize(
        &Tensor::ones((4, 32), candle_core::DType::F32, &Device::Cpu).unwrap(),
        GgmlDType::Q8_0,
    )
    .unwrap();
    let mut bytes = Vec::new();
    let version = Value::U32(1);
    let metadata: Vec<_> = [("imp.format_version", &version)]
        .into_iter()
        .chain(metadata.iter().copied())
        .collect();
    let tensors: Vec<_> = names.iter().map(|&name| (name, &weight)).collect();
    gguf_file::write(&mut std::io::Cursor::new(&mut bytes), &metadata, &tensors).unwrap();
    let after = |name: &str| {
        let at = bytes.windows(name.len()).position(|w| w == name.as_bytes());
        at.unwrap() + name.len()
    };
    let entries = names.iter().map(|name| after(name)).collect();
    (bytes, entries)
}

const DIMS: usize = 4;
const OFFSET: usize = 4 + 2 * 8 + 4;

#[test]
fn inconsistent_tensor_tables_are_refused() {
    let width = Value::U32(64);
    let padded: [(&str, &Value); 2] = [
        (
            "imp.padded.names",
            &Value::Array(vec![Value::String("first".into())]),
        ),
        ("imp.padded.widths", &Value::Array(vec![width])),
    ];
    type Edit = fn(&mut Vec<u8>, &[usize]);
    type Metadata<'a> = &'a [(&'a str, &'a Value)];
    type Names<'a> = &'a [&'a str];
    let both: Names = &["first", "second"];
    let zero = Value::U32(0);
    let cases: [(&str, Names, Metadata, Edit, Names); 5] = [
        (
            "data aligned to 0 bytes",
            both,
            &[("general.alignment", &zero)],
            |_, _| {},
            &["not a readable GGUF file", "divide by zero"],
        ),
        (
            "second's data at first's",
            both,
            &[],
            |bytes, entries| {
                bytes[entries[1] + OFFSET..][..8].copy_from_slice(&0u64.to_le_bytes());
            },
            &["`first`", "`second`", "overlap"],
        ),
        (
            "2^32 x 2^32 values",
            both,
            &[],
            |bytes, entries| {
                for dim in 0..2 {
                    let at = entries[0] + DIMS + 8 * dim;
                    bytes[at..][..8].copy_from_slice(&(1u64 << 32).to_le_bytes());
                }
            },
            &["`first`", "impossible shape"],
        ),
        (
            "0 x 2^32 x 2^32 values (no values, strides that overflow)",
            // One tensor: a third dimension moves what follows in the table.
            &["first"],
            &[],
            |bytes, entries| {
                let first = entries[0];
                bytes[first..][..4].copy_from_slice(&3u32.to_le_bytes());
                let dims = [0u64, 1 << 32, 1 << 32].map(u64::to_le_bytes).concat();
                bytes.splice(first + DIMS..first + DIMS + 16, dims);
            },
            &["`first`", "impossible shape"],
        ),
        (
            "padded wider than stored",
            both,
            &padded,
            |_, _| {},
            &["`first`", "width 64", "wider than the 32 stored"],
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("table.gguf");
    for (case, names, metadata, edit, mentions) in cases {
        let (mut bytes, entries) = gguf_of(names, metadata);
        edit(&mut bytes, &entries);
        std::fs::write(&path, bytes).unwrap();
        let err = load_err(&path, Quantization::default());
        for part in ["table.gguf"].iter().chain(mentions) {
            assert!(err.contains(part), "{case}: `{err}` should mention {part}");
        }
    }
}

#[test]
fn truncated_or_foreign_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("model.gguf");
    write_gguf("imp-v1.5-3b-196", &Quantization::all(GgmlDType::Q4K), &file);
    let bytes = std::fs::read(&file).unwrap();

    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    let err = load_err(&cut, Quantization::default());
    assert!(
        err.contains("cut.gguf") && err.contains("truncated"),
        "{err}"
    );

    std::fs::write(&cut, &bytes[..40]).unwrap();
    let err = load_err(&cut, Quantization::default());
    assert!(err.contains("truncated or of another format"), "{err}");

    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "not a model").unwrap();
    let err = load_err(&text, Quantization::default());
    assert!(err.contains("not a readable GGUF file"), "{err}");
}

#[test]
fn a_gguf_file_is_used_as_stored() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("model.gguf");
    write_gguf("imp-v1-3b", &Quantization::all(GgmlDType::Q8_0), &file);
    let err = load_err(&file, Quantization::all(GgmlDType::Q4_0));
    assert!(err.contains("already quantized"), "{err}");

    let again = dir.path().join("again.gguf");
    let err = quantize::write_gguf(
        &file,
        &Quantization::all(GgmlDType::Q4_0),
        &again,
        Overwrite::Refuse,
        &mut |_, _, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("already a GGUF file"), "{err}");
}

#[test]
fn a_gguf_file_needs_a_format_for_every_part() {
    let dir = tempfile::tempdir().unwrap();
    let plan = Quantization::from_names(None, Some("q4_k"), None, None).unwrap();
    let err = quantize::write_gguf(
        &model_dir("imp-v1-3b"),
        &plan,
        &dir.path().join("x.gguf"),
        Overwrite::Refuse,
        &mut |_, _, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("vision") && err.contains("--quant"), "{err}");
}

/// `--out` never destroys what is not ours: not a device or FIFO, not a file of the model being
/// read (even with `--force`), not an existing file without `--force`; a refused run leaves the
/// target untouched.
#[test]
fn quantize_output_is_checked_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    let source = model_dir("imp-v1-3b");
    std::fs::create_dir(&model).unwrap();
    for entry in std::fs::read_dir(&source).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), model.join(entry.file_name())).unwrap();
    }
    let plan = Quantization::all(GgmlDType::Q8_0);
    let write = |out: &Path, overwrite| {
        quantize::write_gguf(&model, &plan, out, overwrite, &mut |_, _, _| {})
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let shard = model.join("model.safetensors");
    let before = std::fs::read(&shard).unwrap();
    for overwrite in [Overwrite::Refuse, Overwrite::Replace] {
        let err = write(&shard, overwrite).unwrap_err();
        assert!(err.contains("is the input"), "{err}");
    }
    assert_eq!(
        std::fs::read(&shard).unwrap(),
        before,
        "the shard is intact"
    );

    let existing = dir.path().join("existing.gguf");
    std::fs::write(&existing, b"keep me").unwrap();
    let err = write(&existing, Overwrite::Refuse).unwrap_err();
    assert!(err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(&existing).unwrap(), b"keep me");
    write(&existing, Overwrite::Replace).unwrap();
    assert_ne!(std::fs::read(&existing).unwrap(), b"keep me");

    let err = write(Path::new("/dev/null"), Overwrite::Replace).unwrap_err();
    assert!(err.contains("a device"), "{err}");
    let err = write(dir.path(), Overwrite::Replace).unwrap_err();
    assert!(err.contains("a folder"), "{err}");
    assert!(!dir.path().join("model.gguf.partial").exists());
}
