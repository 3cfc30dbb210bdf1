#!/usr/bin/env bash
# Kernel trips per request: syscalls, io_uring submissions and context
# switches of one router process under a fixed load, counted with `perf stat`
# (stable on a noisy VM, unlike latency). Each build given runs in turn
# against the same mock, with the same config, at the same rate.
#
# Usage: loadtest/kernel-trips.sh [--rate 1000] [--duration 5] [--stream] [--interval-ms 0] ROUTER_BIN...
# (--interval-ms spaces the mock's 20 stream events: one upstream read per event, as with a real model)
# Needs: perf (Debian: linux-perf), a release build of `loadtest`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
RATE=1000
DURATION=5
STREAM=()
INTERVAL=0
BINS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --rate) RATE="$2"; shift 2 ;;
        --duration) DURATION="$2"; shift 2 ;;
        --stream) STREAM=(--stream); shift ;;
        --interval-ms) INTERVAL="$2"; shift 2 ;;
        *) BINS+=("$1"); shift ;;
    esac
done
[ ${#BINS[@]} -gt 0 ] || { echo "usage: $0 [--rate R] [--duration S] [--stream] [--interval-ms I] ROUTER_BIN..." >&2; exit 2; }
LOADTEST=target/release/loadtest
[ -x "$LOADTEST" ] || cargo build --release -p loadtest

TMP=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT

# Wait for "listening on http://ADDR" in a log file; print ADDR.
addr_of() {
    for _ in $(seq 200); do
        a=$(grep -o 'listening on http://[0-9.:]*' "$1" 2>/dev/null | head -1 | sed 's|listening on http://||')
        [ -n "$a" ] && { echo "$a"; return 0; }
        sleep 0.05
    done
    echo "no address in $1" >&2
    cat "$1" >&2
    return 1
}

taskset -c 1 "$LOADTEST" mock --listen 127.0.0.1:0 --workers 1 --interval-ms "$INTERVAL" 2> "$TMP/mock.log" &
PIDS+=($!)
MOCK=$(addr_of "$TMP/mock.log")

printf '%-40s %8s %10s %12s %12s %12s\n' build requests 'syscalls/r' 'uring-sqe/r' 'ctx-sw/r' 'recvfrom/r'
for BIN in "${BINS[@]}"; do
    cat > "$TMP/router.toml" <<EOF
[server]
host = "127.0.0.1"
port = 0
workers = 1
[logging]
enabled = true
path = "$TMP/requests.jsonl"
[[providers]]
name = "upstream"
format = "openai"
base_url = "http://$MOCK/v1"
[[routers]]
type = "fallback"
EOF
    : > "$TMP/router.log"
    taskset -c 0 "$BIN" "$TMP/router.toml" 2> "$TMP/router.log" &
    RPID=$!
    PIDS+=($RPID)
    ADDR=$(addr_of "$TMP/router.log")
    # Warm up (pools, caches), then count over the measured window only.
    "$LOADTEST" load --url "http://$ADDR" --rate "$RATE" --duration 1s --warmup 0s --cpu 1 "${STREAM[@]}" > /dev/null
    perf stat -x, -o "$TMP/perf.csv" \
        -e raw_syscalls:sys_enter,io_uring:io_uring_submit_req,context-switches,syscalls:sys_enter_recvfrom \
        -p "$RPID" -- sleep "$((DURATION + 1))" &
    PERF=$!
    "$LOADTEST" load --url "http://$ADDR" --rate "$RATE" --duration "${DURATION}s" --warmup 0s --cpu 1 --json "${STREAM[@]}" > "$TMP/load.json"
    wait "$PERF"
    kill "$RPID"; wait "$RPID" 2>/dev/null || true
    REQS=$(python3 -c "import json;print(json.load(open('$TMP/load.json'))['ok'])")
    python3 - "$TMP/perf.csv" "$REQS" "$BIN" <<'PY'
import sys
counts = {}
for line in open(sys.argv[1]):
    parts = line.strip().split(',')
    if len(parts) > 2 and parts[0].replace('.', '').isdigit():
        counts[parts[2]] = float(parts[0])
n = int(sys.argv[2])
# perf counted a little longer than the load ran (idle time adds next to nothing).
per = lambda k: counts.get(k, 0) / n if n else 0
print(f"{sys.argv[3][-40:]:<40} {n:>8} {per('raw_syscalls:sys_enter'):>10.2f} "
      f"{per('io_uring:io_uring_submit_req'):>12.2f} {per('context-switches'):>12.2f} "
      f"{per('syscalls:sys_enter_recvfrom'):>12.2f}")
PY
done
