use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn model_dir(name: &str) -> PathBuf {
    repo().join("crates/imp/tests/fixtures/models").join(name)
}

/// The folder holding libimp, built with this test's profile. `cargo test` does not build a
/// crate's C libraries, so this does, for the whole workspace with its tests: the dev
/// dependencies take part in feature unification only when tests are built, so this is what
/// makes the features those of `cargo test --workspace` and leaves nothing to compile again.
pub fn library_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // target/<profile>/deps/main-<hash>
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => "dev".to_owned(),
            Some(other) => other.to_owned(),
            None => panic!("unexpected test path {}", exe.display()),
        };
        let status = Command::new(env!("CARGO"))
            .args(["build", "--workspace", "--lib", "--tests", "--profile"])
            .arg(&profile)
            .env("CARGO_TARGET_DIR", profile_dir.parent().unwrap())
            .current_dir(repo())
            .status()
            .expect("running cargo");
        assert!(status.success(), "cargo build of the libraries failed");
        profile_dir
    })
}

/// Compiles C `sources` against include/imp.h and the shared libimp (found at run time
/// through the rpath); warnings are errors.
pub fn compile(name: &str, sources: &[PathBuf]) -> PathBuf {
    let lib = library_dir();
    let exe = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let output = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pthread"])
        .arg("-I")
        .arg(repo().join("include"))
        .args(sources)
        .arg("-L")
        .arg(lib)
        .arg("-limp")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap_or_else(|e| panic!("running {cc}: {e}"));
    assert!(
        output.status.success(),
        "compiling {name}:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    exe
}

pub fn run(exe: &Path, args: &[&str]) -> Output {
    Command::new(exe)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", exe.display()))
}
