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
    let cases: [(&[&str], &[&str]); 8] = [
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
