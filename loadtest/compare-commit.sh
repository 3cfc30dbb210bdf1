#!/usr/bin/env bash
# Before/after in one run: the working tree's router against the router built
# at COMMIT, measured side by side by `loadtest compare` (same mock, same
# generated config, same points; the older build is the "baseline" target).
#
# Usage: loadtest/compare-commit.sh COMMIT [loadtest compare options...]
#   e.g. loadtest/compare-commit.sh HEAD~3 --rates 1000,5000 --duration 5s
#        loadtest/compare-commit.sh main --nginx-config loadtest/nginx.conf.template
# COMMIT is built in a temporary git worktree with its own target directory
# (kept in target/compare-commit/ so a second run reuses it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ $# -ge 1 ] || { echo "usage: $0 COMMIT [loadtest compare options...]" >&2; exit 2; }
COMMIT="$1"
shift
REV=$(git rev-parse --verify "$COMMIT^{commit}")
SHORT=$(git rev-parse --short "$REV")
BASE_TARGET="$PWD/target/compare-commit"
TREE=$(mktemp -d)
cleanup() { git worktree remove --force "$TREE" >/dev/null 2>&1 || rm -rf "$TREE"; }
trap cleanup EXIT

echo "==> building the router at $SHORT (worktree $TREE)" >&2
git worktree add --detach "$TREE" "$REV" >/dev/null
(cd "$TREE" && CARGO_TARGET_DIR="$BASE_TARGET" cargo build --release -p opensourcellmrouter)
cp "$BASE_TARGET/release/opensourcellmrouter" "$BASE_TARGET/opensourcellmrouter-$SHORT"

echo "==> building the working tree" >&2
cargo build --release -p opensourcellmrouter -p loadtest

# The worktree is not needed to measure: removed before the run.
cleanup
trap - EXIT
echo "==> router = working tree, baseline = $SHORT" >&2
target/release/loadtest compare \
    --router-bin target/release/opensourcellmrouter \
    --baseline-bin "$BASE_TARGET/opensourcellmrouter-$SHORT" "$@"
