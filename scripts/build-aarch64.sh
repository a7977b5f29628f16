#!/usr/bin/env bash
# Builds `imp` for 64-bit ARM Linux as one static binary (musl, no network features, so no C
# code): it runs as it is on Android (adb shell, Termux) and on a Raspberry Pi. rust-lld links
# it against the musl that Rust ships; only the rustup target is needed.
#   scripts/build-aarch64.sh [PROFILE] [CARGO ARGS...]   (PROFILE: release, the default, or dev)
# Prints the binary's path last. Without the network features `--model` takes a folder, a .gguf
# file or a repo id already in the Hugging Face cache (copy ~/.cache/huggingface over).
set -euo pipefail
cd "$(dirname "$0")/.."

target=aarch64-unknown-linux-musl
profile=${1:-release}
shift || true
rustup target add "$target" >/dev/null
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=rust-lld
cargo build -p imp-cli --no-default-features --locked --target "$target" --profile "$profile" "$@" >&2
case "$profile" in dev | test) dir=debug ;; *) dir=$profile ;; esac
echo "target/$target/$dir/imp"
