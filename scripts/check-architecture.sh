#!/usr/bin/env bash
# The layout rules of docs/ARCHITECTURE.md that a build would not catch:
# - no import cycle among the sibling modules of any crate;
# - the core crate `imp` depends directly on nothing of serving or evaluation (candle-core itself
#   pulls in `zip`; `base64` is allowed for the `data:` image URLs of `imp::messages`);
# - `imp --no-default-features` has no network code anywhere in its tree, and builds.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 scripts/check_module_cycles.py

tree() { cargo tree -p imp -e normal --prefix none --no-dedupe --locked "$@" | sort -u; }

direct=$(tree --depth 1 | grep -E '^(zip|axum|tokio|reqwest|imp-tools|imp-train|imp-server|imp-cli) ' || true)
if [ -n "$direct" ]; then
    printf 'imp must not depend on these (docs/ARCHITECTURE.md, Crates):\n%s\n' "$direct" >&2
    exit 1
fi
network=$(tree --no-default-features | grep -E '^(hf-hub|reqwest|hyper|tokio|axum) ' || true)
if [ -n "$network" ]; then
    printf 'imp --no-default-features must not depend on these:\n%s\n' "$network" >&2
    exit 1
fi
cargo check -p imp --no-default-features --locked --quiet
echo "architecture: no module cycles; imp's dependencies are clean, and it builds without hub"
