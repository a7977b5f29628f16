#!/usr/bin/env bash
# 64-bit ARM, checked on an x86 machine under qemu-user:
# - the imp-kernels tests, cross-compiled, so that the NEON paths (dot products included) are
#   compared with the scalar ones;
# - the static `imp` binary of scripts/build-aarch64.sh and examples/c/ask.c linked against its
#   libimp.a, on the fixture models: the same tokens as transformers and as the x86 build
#   (scripts/check_aarch64_binary.py).
# The kernel tests are built for glibc, whose cross gcc compiles their benchmarks' C; the binary
# for musl (no C in its tree), linked by rust-lld. Installs what it needs: the Rust targets
# (rustup), the cross gcc and qemu (apt, Debian/Ubuntu) and zig's C compiler for ask.c (PyPI:
# ziglang).
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add aarch64-unknown-linux-gnu aarch64-unknown-linux-musl >/dev/null
if ! command -v aarch64-linux-gnu-gcc >/dev/null || ! command -v qemu-aarch64 >/dev/null; then
    sudo=""
    if [ "$(id -u)" != 0 ]; then sudo=sudo; fi
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -q >/dev/null
    $sudo apt-get install -y -q gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user >/dev/null
fi

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
# `-cpu max` offers every extension qemu emulates, dot products among them.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -cpu max -L /usr/aarch64-linux-gnu"
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
# The kernel tests compare every detected path with the scalar one; this makes sure the NEON
# paths are among them.
IMP_EXPECT_ISA=Neon,NeonDotprod cargo test -p imp-kernels --locked --target aarch64-unknown-linux-gnu "$@"

# The dev profile, as the tests: its dependencies are optimised.
imp=$(scripts/build-aarch64.sh dev -p imp-capi | tail -1)
out=$(dirname "$imp")
if [ ! -x .venv-zig/bin/python ]; then
    python3 -m venv .venv-zig
    .venv-zig/bin/python -m pip install --quiet --disable-pip-version-check ziglang
fi
.venv-zig/bin/python -m ziglang cc -target aarch64-linux-musl -static -O2 -Iinclude \
    examples/c/ask.c "$out/libimp.a" -lunwind -o "$out/ask"
cargo build -p imp-cli --locked
python3 scripts/check_aarch64_binary.py "$imp" target/debug/imp "$out/ask"
