use std::path::Path;

/// `include/imp.h` is what cbindgen makes of the source now; `IMP_UPDATE_HEADER=1` rewrites it.
#[test]
fn header_is_current() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).unwrap();
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_config(config)
        .with_src(crate_dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen")
        .write(&mut generated);
    let path = crate::support::repo().join("include/imp.h");
    if std::env::var_os("IMP_UPDATE_HEADER").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is stale: run `IMP_UPDATE_HEADER=1 cargo test -p imp-capi header` and commit it",
        path.display()
    );
}
