"""`/metrics` checked by the tools that consume it: the official Prometheus Python
parser, `promtool check metrics` and a real Prometheus server scraping a running router.

Hermetic: the router (built-in mock provider) and Prometheus listen on 127.0.0.1 only.
`promtool` and `prometheus` come from Debian's `prometheus` package (scripts/test.sh
installs it).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]
BIN = os.environ.get("OSR_BIN", str(REPO / "target" / "debug" / "opensourcellmrouter"))

CONFIG = """
[server]
host = "127.0.0.1"
port = 0
workers = 2
dashboard = true

[logging]
enabled = true
path = "{log}"

[[providers]]
name = "mock"
format = "mock"

[classifiers.keyword]
enabled = true
[classifiers.keyword.tags]
code = ["function"]

[[routers]]
type = "fallback"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def router():
    tmp = Path(tempfile.mkdtemp(prefix="osr-metrics-"))
    cfg = tmp / "config.toml"
    cfg.write_text(CONFIG.format(log=tmp / "requests.jsonl"))
    proc = subprocess.Popen(
        [BIN, str(cfg)], cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    addr = None
    deadline = time.monotonic() + 30
    lines = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if "listening on http://" in line:
            addr = line.split("listening on http://", 1)[1].split()[0]
            break
    assert addr, "router did not start:\n" + "".join(lines)
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    yield f"http://{addr}"
    proc.terminate()
    proc.wait(timeout=10)
    shutil.rmtree(tmp, ignore_errors=True)


def post(base: str, path: str, body: dict) -> int:
    req = urllib.request.Request(
        base + path, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def scrape(base: str) -> str:
    with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
        assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
        return r.read().decode()


def traffic(base: str) -> None:
    for stream in (False, True):
        assert post(base, "/v1/chat/completions", {
            "model": "mock-a", "stream": stream,
            "messages": [{"role": "user", "content": "write a function"}],
        }) == 200
    assert post(base, "/v1/messages", {
        "model": "mock-b", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}],
    }) == 200
    assert post(base, "/v1/chat/completions", {"model": 5}) == 400


def test_the_official_parser_reads_every_family(router):
    traffic(router)
    text = scrape(router)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    # Counters are exposed with _total (the parser strips it from the family name).
    for name, kind in [
        ("router_requests", "counter"),
        ("gen_ai_client_operation_duration_seconds", "histogram"),
        ("gen_ai_server_time_to_first_token_seconds", "histogram"),
        ("gen_ai_client_token_usage", "histogram"),
        ("router_overhead_seconds", "histogram"),
        ("router_upstream_first_byte_seconds", "histogram"),
        ("router_in_flight", "gauge"),
        ("router_log_lines_written", "counter"),
        ("router_log_lines_dropped", "counter"),
        ("router_config_generation", "gauge"),
        ("router_dashboard_subscribers", "gauge"),
    ]:
        assert name in families, f"{name} missing; have {sorted(families)}"
        assert families[name].type == kind, (name, families[name].type)
    reqs = {
        (s.labels["model"], s.labels["client_format"], s.labels["status"]): s.value
        for s in families["router_requests"].samples
        if s.name == "router_requests_total"
    }
    assert reqs[("mock-a", "openai", "200")] >= 2
    assert reqs[("mock-b", "anthropic", "200")] >= 1
    assert reqs[("", "openai", "400")] >= 1
    # Histograms: cumulative buckets ending in +Inf equal to the count.
    dur = [s for s in families["gen_ai_client_operation_duration_seconds"].samples
           if s.labels.get("provider") == "mock"]
    buckets = [s for s in dur if s.name.endswith("_bucket")]
    count = next(s.value for s in dur if s.name.endswith("_count"))
    assert buckets[-1].labels["le"] == "+Inf" and buckets[-1].value == count >= 3
    assert all(a.value <= b.value for a, b in zip(buckets, buckets[1:]))
    tokens = {s.labels["gen_ai_token_type"] for s in families["gen_ai_client_token_usage"].samples}
    assert tokens == {"input", "output"}


def test_promtool_accepts_the_exposition(router):
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: scripts/test.sh installs Debian's prometheus package"
    traffic(router)
    text = scrape(router)
    out = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_real_prometheus_scrapes_the_router(router):
    prometheus = shutil.which("prometheus")
    assert prometheus, "prometheus is missing: scripts/test.sh installs Debian's prometheus package"
    traffic(router)
    tmp = Path(tempfile.mkdtemp(prefix="osr-prom-"))
    target = router.removeprefix("http://")
    (tmp / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n  - job_name: opensourcellmrouter\n"
        f"    static_configs:\n      - targets: ['{target}']\n"
    )
    port = free_port()
    proc = subprocess.Popen(
        [prometheus, f"--config.file={tmp / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        query = urllib.parse.quote('sum(router_requests_total{provider="mock",status="200"})')
        deadline = time.monotonic() + 60
        value = None
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/api/v1/query?query={query}", timeout=5
                ) as r:
                    data = json.load(r)
                result = data["data"]["result"]
                if result:
                    value = float(result[0]["value"][1])
                    break
            except (urllib.error.URLError, ConnectionError, KeyError):
                pass
            time.sleep(0.2)  # polling Prometheus' API with a deadline, not synchronization by sleep
        assert value is not None and value >= 3, "Prometheus never stored router_requests_total"
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/api/v1/targets", timeout=5
        ) as r:
            targets = json.load(r)["data"]["activeTargets"]
        assert targets and targets[0]["health"] == "up", targets
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        shutil.rmtree(tmp, ignore_errors=True)
