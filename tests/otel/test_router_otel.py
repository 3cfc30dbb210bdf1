"""The running router's OpenTelemetry export, decoded with the official
opentelemetry-proto classes (receiver.py): a span per request with the GenAI
attributes and a child span per upstream attempt, an incoming W3C
`traceparent` continued and a new one sent upstream, `sample_ratio`, the log
line's `trace_id`, an unreachable collector costing dropped batches only, and
the final metrics on drain.

Run: .venv/bin/python -m pytest -q tests/otel (after `cargo build --bins`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from opentelemetry.proto.trace.v1 import trace_pb2

from receiver import Receiver

REPO = Path(__file__).resolve().parents[2]
BIN = os.environ.get("OSR_BIN", str(REPO / "target" / "debug" / "opensourcellmrouter"))
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


class Upstream:
    """An OpenAI-format provider that records request headers."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                n = int(self.headers.get("content-length", 0))
                self.rfile.read(n)
                outer.headers.append({k.lower(): v for k, v in self.headers.items()})
                body = json.dumps({
                    "id": "c1", "object": "chat.completion", "created": 1, "model": "up-model",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                                 "finish_reason": "length"}],
                    "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
                }).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Router:
    def __init__(self, otlp: str, upstream: str, ratio: float) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="osr-otel-"))
        self.log = self.tmp / "requests.jsonl"
        cfg = self.tmp / "config.toml"
        cfg.write_text(f"""
[server]
host = "127.0.0.1"
port = 0
workers = 1

[logging]
enabled = true
path = "{self.log}"

[telemetry]
enabled = true
otlp_endpoint = "{otlp}"
service_name = "router-under-test"
sample_ratio = {ratio}

[[providers]]
name = "up"
format = "openai"
base_url = "{upstream}"

[[providers]]
name = "mock"
format = "mock"

[[routers]]
type = "prefix"
model_prefix = "mock"
provider = "mock"

[[routers]]
type = "fallback"
providers = ["up"]
""")
        self.proc = subprocess.Popen([BIN, str(cfg)], cwd=self.tmp, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self.stderr: list[str] = []
        addr = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.stderr.append(line)
            if "listening on http://" in line:
                addr = line.split("listening on http://", 1)[1].split()[0]
                break
        assert addr, "router did not start:\n" + "".join(self.stderr)
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        self.base = f"http://{addr}"

    def _drain_stderr(self):
        for line in self.proc.stderr:
            self.stderr.append(line)

    def chat(self, model: str, traceparent: str | None = None) -> dict:
        headers = {"content-type": "application/json"}
        if traceparent:
            headers["traceparent"] = traceparent
        body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hello"}]})
        req = urllib.request.Request(self.base + "/v1/chat/completions", data=body.encode(),
                                     headers=headers)
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200
            return json.load(r)

    def log_lines(self, n: int) -> list[dict]:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.log.exists():
                lines = [json.loads(l) for l in self.log.read_text().splitlines() if l.strip()]
                if len(lines) >= n:
                    return lines
            time.sleep(0.02)  # polling a file with a deadline
        raise AssertionError(f"expected {n} log lines")

    def metrics(self) -> str:
        with urllib.request.urlopen(self.base + "/metrics", timeout=10) as r:
            return r.read().decode()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=30)
        shutil.rmtree(self.tmp, ignore_errors=True)
        return code


def attrs(span) -> dict:
    out = {}
    for kv in span.attributes:
        v = kv.value
        kind = v.WhichOneof("value")
        if kind == "array_value":
            out[kv.key] = [x.string_value for x in v.array_value.values]
        else:
            out[kv.key] = getattr(v, kind)
    return out


def test_spans_continue_the_callers_trace_and_go_upstream():
    up = Upstream()
    with Receiver() as rx:
        r = Router(rx.url, up.url, 1.0)
        try:
            r.chat("m-1", f"00-{TRACE}-{PARENT}-01")
            r.chat("mock-a")
            # traceparent sent upstream: the caller's trace, the attempt's span.
            sent = up.headers[0]["traceparent"]
            version, trace_id, span_id, flags = sent.split("-")
            assert (version, trace_id, flags) == ("00", TRACE, "01")
            assert span_id != PARENT
            assert rx.wait_for(lambda: len(rx.spans()) >= 3, 30), rx.spans()
            spans = rx.spans()
            server = next(s for s in spans if s.trace_id.hex() == TRACE
                          and s.kind == trace_pb2.Span.SPAN_KIND_SERVER)
            client = next(s for s in spans if s.kind == trace_pb2.Span.SPAN_KIND_CLIENT)
            assert server.parent_span_id.hex() == PARENT
            assert client.trace_id.hex() == TRACE
            assert client.parent_span_id == server.span_id
            assert client.span_id.hex() == span_id, "the span id sent upstream"
            a = attrs(server)
            assert a["gen_ai.operation.name"] == "chat"
            assert a["gen_ai.request.model"] == "m-1"
            assert a["gen_ai.response.model"] == "m-1"
            assert a["gen_ai.system"] == "openai"
            assert a["gen_ai.usage.input_tokens"] == 12
            assert a["gen_ai.usage.output_tokens"] == 3
            assert a["gen_ai.response.finish_reasons"] == ["length"]
            assert a["http.response.status_code"] == 200
            assert server.name == "chat m-1"
            assert server.end_time_unix_nano >= client.end_time_unix_nano >= client.start_time_unix_nano >= server.start_time_unix_nano
            assert attrs(client)["router.outcome"] == "ok"
            assert attrs(client)["url.full"] == up.url
            # The mock request: a new trace, no parent, no client span.
            mock = next(s for s in spans if s.trace_id.hex() != TRACE)
            assert mock.parent_span_id == b""
            assert attrs(mock)["gen_ai.system"] == "mock"
            # The resource names the service.
            res = rx.traces[0].resource_spans[0].resource
            assert {kv.key: kv.value.string_value for kv in res.attributes}["service.name"] == "router-under-test"
            # The log line links to the trace.
            lines = r.log_lines(2)
            assert lines[0]["trace_id"] == TRACE
            assert len(lines[1]["trace_id"]) == 32 and lines[1]["trace_id"] == mock.trace_id.hex()
        finally:
            code = r.stop()
        assert code == 0
        # On drain the last metrics go out too.
        assert rx.wait_for(lambda: len(rx.metric_list()) > 0, 10)
        names = {m.name for m in rx.metric_list()}
        assert {"gen_ai.client.token.usage", "gen_ai.client.operation.duration",
                "router.requests"} <= names, names
        usage = next(m for m in rx.metric_list() if m.name == "gen_ai.client.token.usage")
        points = usage.histogram.data_points
        assert sum(p.sum for p in points) >= 15
    up.close()


def test_sample_ratio_zero_exports_only_what_the_caller_sampled():
    up = Upstream()
    with Receiver() as rx:
        r = Router(rx.url, up.url, 0.0)
        try:
            r.chat("m-1")  # no parent: not sampled at ratio 0
            r.chat("m-1", f"00-{TRACE}-{PARENT}-01")  # the caller sampled it
            r.chat("m-1", f"00-{'a' * 32}-{PARENT}-00")  # the caller did not
            assert rx.wait_for(lambda: len(rx.spans()) >= 2, 30)
            lines = r.log_lines(3)
            assert all(len(l["trace_id"]) == 32 for l in lines)
            # The unsampled parent's flag is passed on upstream.
            assert up.headers[2]["traceparent"].endswith("-00")
        finally:
            assert r.stop() == 0
        assert {s.trace_id.hex() for s in rx.spans()} == {TRACE}
    up.close()


def test_an_unreachable_collector_costs_dropped_batches_not_requests():
    up = Upstream()
    with Receiver() as rx:
        dead = rx.url
    # The receiver is closed: its port refuses connections now.
    r = Router(dead, up.url, 1.0)
    try:
        for _ in range(5):
            r.chat("m-1")
        deadline = time.monotonic() + 20
        dropped = 0.0
        while time.monotonic() < deadline:
            for line in r.metrics().splitlines():
                if line.startswith("router_telemetry_dropped_batches_total "):
                    dropped = float(line.split()[1])
            if dropped >= 1:
                break
            time.sleep(0.1)  # polling /metrics with a deadline
        assert dropped >= 1
        warnings = [l for l in r.stderr if "warning" in l and "otlp" in l.lower()]
        assert len(warnings) == 1, r.stderr
    finally:
        assert r.stop() == 0
    up.close()
