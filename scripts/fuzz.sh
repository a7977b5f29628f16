#!/usr/bin/env bash
# Fuzzes every reader of untrusted input (fuzz/fuzz_targets) for SECONDS each (default 60),
# seeded from the fixtures (scripts/fuzz_seeds.py); CI runs it with 10 as a smoke test.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Needs `cargo +nightly` and cargo-fuzz (`cargo install cargo-fuzz --locked`). Environment:
# FUZZ_SANITIZER (default none; `address` for long runs that also watch the unsafe kernels).
# Inputs that found new coverage accumulate in fuzz/corpus/<target>; a crash, a timeout
# (20 s) or an allocation over 2 GB leaves its input in fuzz/artifacts/<target>/ and makes the
# script exit 1 after every target has run. Replay one with
# `cargo +nightly fuzz run TARGET fuzz/artifacts/TARGET/FILE`.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
shift || true
sanitizer=${FUZZ_SANITIZER:-none}
cd fuzz
if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

python3 ../scripts/fuzz_seeds.py seeds
cargo +nightly fuzz build --sanitizer "$sanitizer"

failed=()
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target"
    echo "== $target: ${seconds} s"
    log=$(mktemp)
    if cargo +nightly fuzz run --sanitizer "$sanitizer" "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -timeout=20 -rss_limit_mb=2048 -malloc_limit_mb=2048 \
        -dict=json.dict -print_final_stats=1 >"$log" 2>&1; then
        grep -E "^stat::(number_of_executed_units|peak_rss_mb|new_units_added)" "$log" |
            sed 's/^/   /' || true
        echo "   corpus: $(ls "corpus/$target" | wc -l) inputs"
    else
        tail -n 40 "$log"
        failed+=("$target")
    fi
    rm -f "$log"
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzzing found failures in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzzing: ${#targets[@]} targets, ${seconds} s each, nothing found"
