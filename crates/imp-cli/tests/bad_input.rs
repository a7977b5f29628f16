//! Bad input ends with exit status 1 and a message naming the problem, never with a panic.

use crate::support::{arg, assert_fails_with, image, imp, imp_with_env, model};

#[test]
fn bad_input_fails_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let not_an_image = dir.path().join("photo.png");
    std::fs::write(&not_an_image, b"definitely not a PNG").unwrap();
    let not_an_image = arg(&not_an_image);
    let tiny = model("imp-v1-3b");
    let tiny = arg(&tiny);
    let coffee = image("skimage_coffee.png");
    let coffee = arg(&coffee);
    let two_markers = "USER: <image>\n<image>\nCompare them. ASSISTANT:";
    // (arguments, what the message must mention)
    let cases: [(&[&str], &[&str]); 9] = [
        (&["info", "--model", "/no/such/model"], &["/no/such/model"]),
        (
            &[
                "run",
                "--model",
                tiny,
                "--image",
                not_an_image,
                "--prompt",
                "What is this?",
            ],
            &["photo.png"],
        ),
        (
            &[
                "run",
                "--model",
                tiny,
                "--image",
                "/no/such/photo.jpg",
                "--prompt",
                "What is this?",
            ],
            &["/no/such/photo.jpg"],
        ),
        (
            &[
                "run",
                "--model",
                tiny,
                "--image",
                coffee,
                "--prompt",
                two_markers,
            ],
            &["2 `<image>` marker(s)"],
        ),
        (
            &[
                "run", "--model", tiny, "--image", coffee, "--prompt", "Hi", "--top-p", "1.5",
            ],
            &["top_p"],
        ),
        (
            &["info", "--model", tiny, "--vision-quant", "q3"],
            &["`q3`", "f16", "q8_0", "q4_k"],
        ),
        (
            &["info", "--model", tiny, "--kv-cache", "q4"],
            &["\"q4\"", "f32, f16, bf16, q8"],
        ),
        (
            &["bench", "--synthetic", "imp-v9", "--json"],
            &["unknown preset `imp-v9`", "imp-v1.5-3b"],
        ),
        (
            &["bench", "--synthetic", "imp-v1.5-2b", "--threads", "0"],
            &["--threads"],
        ),
    ];
    for (args, mentions) in cases {
        assert_fails_with(&imp(args), mentions);
    }
}

#[test]
fn uncached_repo_id_offline_names_the_fix() {
    let cache = tempfile::tempdir().unwrap();
    let out = imp_with_env(
        &["info", "--model", "MILVLG/Imp-v1.5-3B-196"],
        &[("HF_HUB_CACHE", cache.path())],
    );
    assert_fails_with(
        &out,
        &[
            "MILVLG/Imp-v1.5-3B-196",
            "config.json",
            "huggingface-cli download",
        ],
    );
}

/// Endless or blocking inputs are refused before anything is read, and outputs never replace
/// a device, an input or (without `--force`) an existing file.
#[test]
fn special_files_are_refused_without_reading_or_replacing_them() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("photo.png");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    assert!(made.is_ok_and(|s| s.success()), "mkfifo");
    let existing = dir.path().join("existing.gguf");
    std::fs::write(&existing, b"keep me").unwrap();
    let tiny = model("imp-v1-3b");
    let shard = tiny.join("model.safetensors");
    let (fifo, existing, tiny, shard) = (arg(&fifo), arg(&existing), arg(&tiny), arg(&shard));
    let ask = |image: &'static str| -> Vec<&'static str> {
        vec![
            "run", "--model", "MODEL", "--image", image, "--prompt", "Hi",
        ]
    };
    let cases: Vec<(Vec<&str>, &[&str])> = vec![
        (ask("FIFO"), &["photo.png", "is a FIFO"]),
        (ask("/dev/zero"), &["/dev/zero", "is a device"]),
        (
            vec![
                "quantize",
                "--model",
                tiny,
                "--quant",
                "q8_0",
                "--out",
                "/dev/full",
            ],
            &["/dev/full", "is a device"],
        ),
        (
            vec![
                "quantize", "--model", tiny, "--quant", "q8_0", "--out", shard, "--force",
            ],
            &["model.safetensors", "is the input"],
        ),
        (
            vec![
                "quantize", "--model", tiny, "--quant", "q8_0", "--out", existing,
            ],
            &["existing.gguf", "--force"],
        ),
    ];
    for (args, mentions) in cases {
        let args: Vec<&str> = args
            .into_iter()
            .map(|a| match a {
                "MODEL" => tiny,
                "FIFO" => fifo,
                other => other,
            })
            .collect();
        assert_fails_with(&imp(&args), mentions);
    }
    assert_eq!(std::fs::read(existing).unwrap(), b"keep me");

    // A pipe that never ends, as standard input.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_imp"))
        .args([
            "run",
            "--model",
            tiny,
            "--image",
            "/dev/stdin",
            "--prompt",
            "Hi",
        ])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let block = [0u8; 1 << 16];
        while stdin.write_all(&block).is_ok() {}
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert_fails_with(&out, &["/dev/stdin", "is a FIFO"]);
}

#[test]
fn errors_carry_no_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join("cut.gguf");
    // A header that promises tensors and metadata the file does not hold.
    std::fs::write(&cut, b"GGUF\x03\0\0\0\x01\0\0\0\0\0\0\0\x01\0\0\0\0\0\0\0").unwrap();
    let backtrace = [("RUST_BACKTRACE", std::path::Path::new("1"))];
    let out = imp_with_env(&["info", "--model", arg(&cut)], &backtrace);
    assert_fails_with(&out, &["cut.gguf", "not a readable GGUF file"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.lines().count() <= 2, "a one-line error, got: {err}");
}
