#!/usr/bin/env bash
# Type-checks the `cuda` feature on a machine without a GPU or CUDA toolkit: NVIDIA's pip wheels
# give nvcc and the headers, which candle's kernels are compiled with (PTX for sm_90 unless
# CUDA_COMPUTE_CAP says otherwise). Not run by CI (about 150 MB of wheels and 8 minutes on
# 2 cores). Linking needs the real toolkit and driver; scripts/gpu/train-phi2.sh does that on
# a GPU machine. Run from the repository root:  scripts/gpu/check-cuda-build.sh
set -euo pipefail

venv=${CUDA_VENV:-target/cuda-venv}
[ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q "nvidia-cuda-nvcc==13.*" "nvidia-cuda-runtime==13.*" \
    "nvidia-cuda-crt==13.*" "nvidia-cuda-cccl==13.*"
toolkit=$(echo "$venv"/lib/python3*/site-packages/nvidia/cu13)
toolkit=$(cd "$toolkit" && pwd)
release=$("$toolkit/bin/nvcc" --version | sed -n 's/.*release \([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
read -r major minor <<<"$release"
# cudarc knows toolkits up to 13.4 by name; the 13.x driver API it binds is the same.
[ "$major" -eq 13 ] && [ "$minor" -gt 4 ] && minor=4
export PATH=$toolkit/bin:$PATH CUDA_ROOT=$toolkit CUDA_PATH=$toolkit CUDA_HOME=$toolkit
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90} CUDARC_CUDA_VERSION=${major}0${minor}0
cargo check -p imp-cli --features cuda --target-dir target/cuda-check
