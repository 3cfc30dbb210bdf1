#!/usr/bin/env bash
# CI smoke of the load-test harness: build the router and loadtest in release
# mode, then run a few-second `loadtest compare --quick` (router and direct to
# the mock; concurrency 1 and 200 req/s; plain and streamed). Exits non-zero
# if any request failed or the router died — never on timings.
# Extra arguments are passed to `loadtest compare`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p opensourcellmrouter -p loadtest
target_dir="${CARGO_TARGET_DIR:-target}"
exec "$target_dir/release/loadtest" compare \
    --router-bin "$target_dir/release/opensourcellmrouter" --quick "$@"
