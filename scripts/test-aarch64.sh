#!/usr/bin/env bash
# Cross-compiles the imp-kernels tests for 64-bit ARM and runs them under qemu-user, so the NEON
# paths (dot-product instructions included) are checked on an x86 machine. Installs what it needs:
# the Rust target (rustup), the cross linker and qemu (apt, Debian/Ubuntu).
set -euo pipefail
cd "$(dirname "$0")/.."

target=aarch64-unknown-linux-gnu
rustup target add "$target" >/dev/null
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
export IMP_EXPECT_ISA=Neon,NeonDotprod
cargo test -p imp-kernels --locked --target "$target" "$@"
