#!/usr/bin/env bash
# 64-bit ARM, checked on an x86 machine under qemu-user:
# - the imp-kernels tests, cross-compiled, so that the NEON paths (dot products included) are
#   compared with the scalar ones;
# - the static `imp` binary of scripts/build-aarch64.sh and examples/c/ask.c linked against its
#   libimp.a, on the fixture models: the same tokens as transformers and as the x86 build
#   (scripts/check_aarch64_binary.py).
# Everything is built once, for musl, and linked by rust-lld; zig's C compiler (PyPI: ziglang)
# builds the one C file of the tree (criterion's `alloca`, for the kernels' benchmarks) and
# examples/c/ask.c. Installs what it needs: the Rust target (rustup), qemu (apt, Debian/Ubuntu)
# and ziglang.
set -euo pipefail
cd "$(dirname "$0")/.."

target=aarch64-unknown-linux-musl
rustup target add "$target" >/dev/null
if ! command -v qemu-aarch64 >/dev/null; then
    sudo=""
    if [ "$(id -u)" != 0 ]; then sudo=sudo; fi
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -q >/dev/null
    $sudo apt-get install -y -q qemu-user >/dev/null
fi
if [ ! -x .venv-zig/bin/python ]; then
    python3 -m venv .venv-zig
    .venv-zig/bin/python -m pip install --quiet --disable-pip-version-check ziglang
fi
# cc-rs takes a compiler and an archiver, not a command line: two small wrappers. The compiler
# drops cc-rs's `--target=aarch64-unknown-linux-musl`, a triple zig does not read.
zig_bin=target/zig-wrappers
zig="$PWD/.venv-zig/bin/python -m ziglang"
mkdir -p "$zig_bin"
cat >"$zig_bin/cc" <<WRAPPER
#!/bin/sh
for arg; do shift; case "\$arg" in --target=*) ;; *) set -- "\$@" "\$arg" ;; esac; done
exec $zig cc -target aarch64-linux-musl "\$@"
WRAPPER
printf '#!/bin/sh\nexec %s ar "$@"\n' "$zig" >"$zig_bin/ar"
chmod +x "$zig_bin/cc" "$zig_bin/ar"
export CC_aarch64_unknown_linux_musl="$PWD/$zig_bin/cc" AR_aarch64_unknown_linux_musl="$PWD/$zig_bin/ar"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=rust-lld
# `-cpu max` offers every extension qemu emulates, dot products among them.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUNNER="qemu-aarch64 -cpu max"
# The kernel tests compare every detected path with the scalar one; this makes sure the NEON
# paths are among them.
IMP_EXPECT_ISA=Neon,NeonDotprod cargo test -p imp-kernels --locked --target "$target" "$@"

# The dev profile, as the tests: its dependencies are optimised, and shared with them.
imp=$(scripts/build-aarch64.sh dev -p imp-capi | tail -1)
out=$(dirname "$imp")
"$zig_bin/cc" -static -O2 -Iinclude examples/c/ask.c "$out/libimp.a" -lunwind -o "$out/ask"
# The x86 `imp` with the features of `cargo test --workspace`, so that after the tests nothing
# is compiled again (`-p imp-cli` alone would unify fewer features and rebuild the engine).
cargo build --workspace --bins --tests --locked
python3 scripts/check_aarch64_binary.py "$imp" target/debug/imp "$out/ask"
