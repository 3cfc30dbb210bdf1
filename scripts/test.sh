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

echo "==> installing tests/sdk, tests/metrics, tests/dashboard requirements"
.venv/bin/pip install -q --disable-pip-version-check -r tests/sdk/requirements.txt \
    -r tests/metrics/requirements.txt -r tests/dashboard/requirements.txt \
    -r tests/otel/requirements.txt

# Tools the observability tests drive: promtool and Prometheus (tests/metrics),
# headless Chromium (tests/dashboard), tmux (tests/tui.rs).
missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v tmux >/dev/null 2>&1 || missing+=(tmux)
if [ ${#missing[@]} -gt 0 ]; then
    echo "==> apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

echo "==> cargo build --bins"
cargo build --bins

echo "==> cargo test --workspace --all-targets"
cargo test --workspace --all-targets

echo "==> pytest tests/sdk"
OSR_BIN="${OSR_BIN:-$PWD/target/debug/opensourcellmrouter}" \
    .venv/bin/python -m pytest -q tests/sdk

echo "==> pytest tests/metrics (prometheus_client parser, promtool, a real Prometheus)"
OSR_BIN="${OSR_BIN:-$PWD/target/debug/opensourcellmrouter}" \
    .venv/bin/python -m pytest -q tests/metrics

echo "==> pytest tests/otel (OTLP decoded with the official opentelemetry-proto classes)"
OSR_BIN="${OSR_BIN:-$PWD/target/debug/opensourcellmrouter}" \
    .venv/bin/python -m pytest -q tests/otel

echo "==> pytest tests/dashboard (headless Chromium on the real page)"
OSR_BIN="${OSR_BIN:-$PWD/target/debug/opensourcellmrouter}" OSR_DASHBOARD_SCREENSHOT=0 \
    .venv/bin/python -m pytest -q tests/dashboard

echo "==> all tests passed"
