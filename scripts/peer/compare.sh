#!/usr/bin/env bash
# imp vs llama.cpp on the same random-weight Imp-v1.5-3B model, one table per format and image size.
#
# Run from anywhere in a checkout (a Rust toolchain and python3 >= 3.11 with venv are needed):
#
#   scripts/peer/compare.sh                      # q4_k, q8_0, q4_0 at 384 and 196 px
#   scripts/peer/compare.sh --quant q4_k --sizes 384
#   scripts/peer/compare.sh --quant q4_k,q8_0 --kv-cache q8   # both engines with an 8-bit KV cache
#   scripts/peer/compare.sh --llama-only         # llama.cpp's half alone
#   scripts/peer/compare.sh --build-only         # only build llama.cpp
#   scripts/peer/compare.sh --from-json target/peer/comparison.json   # redo table + chart
#   scripts/peer/compare.sh --help               # every option
#
# Results: target/peer/comparison.{json,md,png} (the .md is the table for the README); the logs
# of every command under target/peer/logs. The .md's header names the CPU (/proc/cpuinfo) and the
# instruction-set paths imp's kernels took (`imp bench --json`'s `isa`); one table per format and
# image size, then one row per format (q4_k, q8_0, q4_0) of decode at short context and after the
# image prompt, with each engine's fraction of the bandwidth bound. q8_0 is among the default
# formats; --quant q4_k,q8_0 measures just those two.
#
# KV cache: --kv-cache f32|f16|q8 (default f16) sets both engines' cache: imp's --kv-cache, and
# llama.cpp's -ctk/-ctv (q8 is its q8_0, run with -fa 1: llama.cpp needs flash attention for a
# quantized V cache). This llama-bench parses no f32 cache type, so with f32 its rows (prefill,
# decode) use f16 while llama-mtmd-cli uses f32; the table title says which cache each side had.
#
# llama.cpp runs with OMP_WAIT_POLICY=PASSIVE by default (--omp-wait): its OpenMP threads'
# busy-waiting collapses its speed on a shared machine.
#
# Downloads, from PyPI only: the packages in requirements.txt (into target/peer/venv), and the
# llama-cpp-python source distribution (version pinned in llamacpp.py, sha256 checked against
# PyPI's JSON API and the pin), from which only the vendored vendor/llama.cpp tree is used.
# Nothing else is fetched: no git clone, and llama.cpp's networked parts (server web UI, TLS) are
# configured off. imp is built from this checkout (cargo build --release -p imp-cli) if missing.
#
# Time on 2 busy cores: building llama.cpp's three tools (llama-bench, llama-mtmd-cli,
# llama-quantize) took 12 min of compiling (about 25 min wall, niced, beside other builds) once;
# the build is cached under target/peer/llama.cpp-<version> (about 150 MB with its source) and
# later runs reuse it. Then per image size: imp synth + conversion about 3 min; per format
# about 15 min at 384 px (quantizing both ways 5 min, llama.cpp 7 min, imp 3 min) and less at
# 196 px; imp's q4_0, which has no fast x86 kernel, adds up to 20 min. The default run (3 formats
# x 2 sizes) takes 1.5-2 h. Disk: about 20 GB while a 384 px model is in use; every model file
# is deleted when its image size is done (--keep keeps them).
#
# AMX caveat: llama.cpp's AMX kernels crash on this machine (a known upstream bug), so they are
# compiled out: GGML_AMX_TILE/INT8/BF16=OFF and -mno-amx-tile -mno-amx-int8 -mno-amx-bf16 in
# CMAKE_C_FLAGS/CMAKE_CXX_FLAGS, on top of -march=native. On a CPU with AMX (Sapphire Rapids and
# later) llama.cpp would be measured without it.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
venv="$repo/target/peer/venv"
req="$repo/scripts/peer/requirements.txt"

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
# Reinstall only when requirements.txt changed since the last install.
if ! cmp -s "$req" "$venv/requirements.installed"; then
    "$venv/bin/pip" install --quiet -r "$req"
    cp "$req" "$venv/requirements.installed"
fi
exec "$venv/bin/python" "$repo/scripts/peer/compare.py" "$@"
