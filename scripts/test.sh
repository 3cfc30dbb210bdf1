#!/usr/bin/env bash
# The project's one test command: Rust unit + integration tests, then the
# official-OpenAI-SDK compatibility tests (tests/sdk) against the built binary.
# Usage: bash scripts/test.sh   (from any directory)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-python3}"

if [ ! -x .venv/bin/python ] || [ ! -x .venv/bin/pip ]; then
    echo "==> creating .venv"
    rm -rf .venv
    if ! "$PYTHON" -m venv .venv; then
        rm -rf .venv
        echo "==> '$PYTHON -m venv' failed; installing python3-venv" >&2
        apt-get update
        apt-get install -y python3-venv
        "$PYTHON" -m venv .venv
    fi
fi

echo "==> installing tests/sdk/requirements.txt"
.venv/bin/pip install -q --disable-pip-version-check -r tests/sdk/requirements.txt

echo "==> cargo build --bins"
cargo build --bins

echo "==> cargo test --workspace --all-targets"
cargo test --workspace --all-targets

echo "==> pytest tests/sdk"
OSR_BIN="${OSR_BIN:-$PWD/target/debug/opensourcellmrouter}" \
    .venv/bin/python -m pytest -q tests/sdk

echo "==> all tests passed"
