#!/usr/bin/env bash
# Soak with observers attached: the router (keyword classifier, five rules,
# JSONL logging, dashboard on) under `loadtest load --rate RATE` for DURATION
# seconds, with one dashboard feed subscriber reading everything and a
# /metrics scrape every 30 s. Prints, every 30 s: router RSS, feed
# subscribers, events dropped, subscribers dropped, log lines written.
# Usage: loadtest/soak-observe.sh [RATE=2000] [DURATION=600]
# Needs: target/release/{opensourcellmrouter,loadtest}, curl.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
RATE="${1:-2000}"
DURATION="${2:-600}"
BIN=target/release/opensourcellmrouter
LT=target/release/loadtest
TMP="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT

taskset -c 1 "$LT" mock --listen 127.0.0.1:0 --workers 1 2> "$TMP/mock.log" &
PIDS+=($!)
until grep -q "listening on http://" "$TMP/mock.log"; do sleep 0.1; done
MOCK=$(grep -o "http://[0-9.:]*" "$TMP/mock.log" | head -1)

cat > "$TMP/config.toml" <<CFG
[server]
host = "127.0.0.1"
port = 0
workers = 1
dashboard = true
[logging]
enabled = true
path = "$TMP/requests.jsonl"
[[providers]]
name = "upstream"
format = "openai"
base_url = "$MOCK/v1"
[classifiers.keyword]
enabled = true
[classifiers.keyword.tags]
code = ["function", "compile", "rust"]
finance = ["invoice", "budget"]
[[routers]]
type = "prefix"
model_prefix = "local/"
provider = "upstream"
[[routers]]
type = "tag"
tag = "finance"
provider = "upstream"
[[routers]]
type = "fallback"
providers = ["upstream"]
CFG
taskset -c 0 "$BIN" "$TMP/config.toml" 2> "$TMP/router.log" &
RPID=$!
PIDS+=($RPID)
until grep -q "listening on http://" "$TMP/router.log"; do sleep 0.1; done
URL=$(grep -o "listening on http://[0-9.:]*" "$TMP/router.log" | head -1 | sed 's/listening on //')

# The subscriber: reads the whole feed, counts its bytes.
taskset -c 1 curl -sN "$URL/dashboard/events" > "$TMP/feed.bytes" &
PIDS+=($!)

taskset -c 1 "$LT" load --url "$URL" --rate "$RATE" --duration "${DURATION}s" --warmup 1s --cpu 1 > "$TMP/load.txt" 2>&1 &
LPID=$!
PIDS+=($LPID)

metric() { curl -s "$URL/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
printf "%6s %10s %5s %14s %12s %12s %12s\n" t_s rss_kb subs events_dropped subs_dropped log_written feed_MB
t=0
while kill -0 "$LPID" 2>/dev/null; do
    rss=$(awk '/VmRSS/ {print $2}' /proc/$RPID/status)
    printf "%6d %10s %5s %14s %12s %12s %12.1f\n" "$t" "$rss" \
        "$(metric router_dashboard_subscribers)" "$(metric router_dashboard_dropped_events_total)" \
        "$(metric router_dashboard_dropped_subscribers_total)" "$(metric router_log_lines_written_total)" \
        "$(echo "$(stat -c %s "$TMP/feed.bytes") / 1048576" | bc -l)"
    sleep 30
    t=$((t + 30))
done
cat "$TMP/load.txt"
echo "complete events received by the subscriber: $(grep -c '"type":"complete"' "$TMP/feed.bytes")"
