#!/usr/bin/env bash
# `imp train` on a CUDA GPU at the Phi-2 shapes (`imp synth --preset imp-v1.5-3b`): bf16, LoRA
# r 256 on every language-model linear layer and lm_head, projector trained, micro-batch 1, one
# image sample of about 1000 and of about 2048 tokens, with and without `--recompute layer`.
# For each run it prints the peak GPU memory (nvidia-smi, sampled every 200 ms), the mean step
# time after the first step, whether every gradient norm was finite, and the loss of the first
# and last of 8 steps on the same sample (it should fall).
#
# Needs the CUDA toolkit (nvcc) to build candle's kernels. Run from the repository root:
#   scripts/gpu/train-phi2.sh [WORK_DIR]      (default target/gpu-train; the model takes 6 GB)
set -euo pipefail

work=${1:-target/gpu-train}
steps=8
mkdir -p "$work/images"
cargo build --release -p imp-cli --features cuda
imp=target/release/imp
model=$work/phi2
[ -f "$model/config.json" ] || "$imp" synth --preset imp-v1.5-3b --out "$model"
cp crates/imp/tests/fixtures/images/skimage_coffee.png "$work/images/photo.png"

# 729 visual rows plus the prompt are about 780 tokens; the answer makes up the rest.
sample() {
    local sentences=$1 answer=""
    for _ in $(seq "$sentences"); do answer+="The cup holds coffee with milk foam. "; done
    printf '[{"id":"s","image":"photo.png","conversations":[{"from":"human","value":"<image>\\nDescribe the picture."},{"from":"gpt","value":"%s"}]}]\n' "$answer"
}
sample 25 >"$work/data-1000.json"
sample 160 >"$work/data-2048.json"

printf '| tokens | recompute | peak GPU memory | step time | finite | loss first -> last |\n|---|---|---|---|---|---|\n' >"$work/summary.md"
for tokens in 1000 2048; do
    for recompute in none layer; do
        run=$work/run-$tokens-$recompute
        rm -rf "$run"
        nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 >"$run.memory" &
        sampler=$!
        status=0
        "$imp" train --recipe imp-stage2 --model "$model" --data "$work/data-$tokens.json" \
            --image-folder "$work/images" --out "$run" --dtype bf16 --device cuda:0 \
            --micro-batch 1 --global-batch 1 --epochs "$steps" --max-len 4096 \
            --warmup-ratio 0 --scheduler constant --lr 1e-4 --recompute "$recompute" \
            >"$run.log" 2>&1 || status=$?
        kill "$sampler"
        peak=$(sort -n "$run.memory" | tail -1)
        python3 - "$run/log.jsonl" "$tokens" "$recompute" "$peak" "$status" >>"$work/summary.md" <<'PY'
import json, math, sys
path, tokens, recompute, peak, status = sys.argv[1:]
try:
    steps = [json.loads(line) for line in open(path)]
except OSError:
    steps = []
if status != "0" or not steps:
    print(f"| {tokens} | {recompute} | {peak} MiB | failed (exit {status}, see its .log) | | |")
    sys.exit()
later = [s["seconds"] for s in steps[1:]] or [steps[0]["seconds"]]
finite = all(math.isfinite(s["grad_norm"]) and math.isfinite(s["loss"]) for s in steps)
print(f"| {tokens} | {recompute} | {peak} MiB | {sum(later) / len(later):.2f} s | {finite} "
      f"| {steps[0]['loss']:.3f} -> {steps[-1]['loss']:.3f} |")
PY
    done
done
cat "$work/summary.md"
