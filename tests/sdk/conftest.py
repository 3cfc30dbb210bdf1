"""Fixtures for the OpenAI Python SDK compatibility tests.

Everything is hermetic: a tiny threaded HTTP/1.1 mock upstream on 127.0.0.1:0 plays the
OpenAI-format provider, and the router binary is started on port 0 with a config written
into a temporary directory.  Nothing touches the network beyond loopback.
"""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
UPSTREAM_KEY = "sk-upstream-secret"
CLIENT_KEY = "client-key"
STARTUP_TIMEOUT_S = 30.0

# Loopback traffic must never be sent through a proxy configured in the environment.
_no_proxy = ",".join(p for p in (os.environ.get("NO_PROXY", ""), "127.0.0.1", "localhost") if p)
os.environ["NO_PROXY"] = _no_proxy
os.environ["no_proxy"] = _no_proxy


# --------------------------------------------------------------------------- mock upstream

UPSTREAM_TEXT = "hello from upstream"
STREAM_PIECES = ["hel", "lo", " from", " upstream"]
PROMPT_TOKENS = 11
COMPLETION_TOKENS = 7


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    raw_headers: list[tuple[str, str]]
    body_bytes: bytes
    body: Any  # parsed JSON, or None if the body was not JSON


@dataclass
class MockUpstream:
    port: int
    requests: list[RecordedRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def record(self, req: RecordedRequest) -> None:
        with self.lock:
            self.requests.append(req)

    def find(self, marker: str) -> list[RecordedRequest]:
        """Requests whose raw body contains `marker` (each test uses a unique marker)."""
        needle = marker.encode()
        with self.lock:
            return [r for r in self.requests if needle in r.body_bytes]

    def find_one(self, marker: str) -> RecordedRequest:
        found = self.find(marker)
        assert len(found) == 1, (
            f"expected exactly one upstream request containing {marker!r}, got {len(found)}"
        )
        return found[0]


def _usage() -> dict[str, int]:
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": COMPLETION_TOKENS,
        "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
    }


def _make_handler(upstream: MockUpstream) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive; router may reuse connections

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence
            pass

        # -- helpers ----------------------------------------------------------------
        def _read_body(self) -> bytes:
            te = (self.headers.get("Transfer-Encoding") or "").lower()
            if "chunked" in te:
                out = bytearray()
                while True:
                    size_line = self.rfile.readline()
                    size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                    if size == 0:
                        # trailers until blank line
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return bytes(out)
                    out += self.rfile.read(size)
                    self.rfile.readline()  # CRLF after chunk data
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _send_json(self, status: int, obj: Any) -> None:
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()

        def _write_chunk(self, data: bytes) -> None:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        # -- routes -----------------------------------------------------------------
        def do_POST(self) -> None:  # noqa: N802
            body_bytes = self._read_body()
            try:
                body = json.loads(body_bytes) if body_bytes else None
            except ValueError:
                body = None
            upstream.record(
                RecordedRequest(
                    method="POST",
                    path=self.path,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    raw_headers=list(self.headers.items()),
                    body_bytes=body_bytes,
                    body=body,
                )
            )
            if self.path.split("?", 1)[0] != "/v1/chat/completions":
                self._send_json(
                    404,
                    {"error": {"message": f"no route {self.path}", "type": "invalid_request_error", "code": None}},
                )
                return
            if not isinstance(body, dict):
                self._send_json(
                    400, {"error": {"message": "body is not a JSON object", "type": "invalid_request_error", "code": None}}
                )
                return
            model = body.get("model", "unknown")
            if body.get("stream"):
                self._stream(model, body)
            else:
                self._send_json(
                    200,
                    {
                        "id": "chatcmpl-mock-1",
                        "object": "chat.completion",
                        "created": 1700000000,
                        "model": model,
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": UPSTREAM_TEXT},
                                "logprobs": None,
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": _usage(),
                    },
                )

        def _stream(self, model: str, body: dict[str, Any]) -> None:
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()

            def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
                c: dict[str, Any] = {
                    "id": "chatcmpl-mock-stream",
                    "object": "chat.completion.chunk",
                    "created": 1700000000,
                    "model": model,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
                }
                if include_usage:
                    c["usage"] = None
                return c

            events: list[dict[str, Any]] = [chunk({"role": "assistant", "content": ""}, None)]
            events += [chunk({"content": p}, None) for p in STREAM_PIECES]
            events.append(chunk({}, "stop"))
            if include_usage:
                events.append(
                    {
                        "id": "chatcmpl-mock-stream",
                        "object": "chat.completion.chunk",
                        "created": 1700000000,
                        "model": model,
                        "choices": [],
                        "usage": _usage(),
                    }
                )
            for ev in events:
                self._write_chunk(b"data: " + json.dumps(ev).encode() + b"\n\n")
            self._write_chunk(b"data: [DONE]\n\n")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

    return Handler


@pytest.fixture(scope="session")
def upstream() -> MockUpstream:
    state = MockUpstream(port=0)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(state))
    server.daemon_threads = True
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, name="mock-upstream", daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------- router process


def _toml_str(s: str) -> str:
    # A JSON string literal is a valid TOML basic string for the paths used here.
    return json.dumps(s)


def write_config(dir_: Path, upstream_base_url: str) -> tuple[Path, Path]:
    log_path = dir_ / "requests.jsonl"
    cfg = f"""\
[server]
host = "127.0.0.1"
port = 0
workers = 1

[logging]
enabled = true
path = {_toml_str(str(log_path))}

[classifiers.keyword]
enabled = true

[classifiers.keyword.tags]
code = ["python", "function"]

[[providers]]
name = "up"
format = "openai"
base_url = {_toml_str(upstream_base_url)}
api_key_env = "OSR_TEST_UPSTREAM_KEY"

[[providers]]
name = "mock"
format = "mock"

[[routers]]
type = "prefix"
model_prefix = "mock"
provider = "mock"

[[routers]]
type = "prefix"
model_prefix = "alias-"
provider = "up"
rewrite_model = "real-model"

[[routers]]
type = "fallback"
providers = ["up"]
"""
    cfg_path = dir_ / "config.toml"
    cfg_path.write_text(cfg)
    return cfg_path, log_path


@dataclass
class RouterProc:
    proc: subprocess.Popen
    addr: str  # host:port
    log_path: Path
    stderr_lines: list[str]

    @property
    def base_url(self) -> str:
        return f"http://{self.addr}/v1"

    def stderr_tail(self, n: int = 40) -> str:
        return "".join(self.stderr_lines[-n:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


_LISTEN_RE = re.compile(r"listening on http://(\[[^\]]+\]:\d+|[^\s/:]+:\d+)")


def router_binary() -> Path:
    return Path(os.environ.get("OSR_BIN") or REPO_ROOT / "target" / "debug" / "opensourcellmrouter")


def start_router(
    dir_: Path,
    upstream: MockUpstream | None,
    *,
    config_text: str | None = None,
    extra_env: dict[str, str] | None = None,
) -> RouterProc:
    """Start the router. By default with `write_config` for `upstream`; with `config_text`, that
    config instead (its `[logging] path` should be `dir_/requests.jsonl`) and `extra_env` added."""
    binary = router_binary()
    if not binary.exists():
        pytest.fail(f"router binary {binary} not found: run `cargo build --bins` (or set OSR_BIN)")
    if config_text is None:
        assert upstream is not None
        cfg_path, log_path = write_config(dir_, upstream.base_url)
    else:
        cfg_path, log_path = dir_ / "config.toml", dir_ / "requests.jsonl"
        cfg_path.write_text(config_text)
    env = dict(os.environ)
    env["OSR_TEST_UPSTREAM_KEY"] = UPSTREAM_KEY
    env.update(extra_env or {})
    proc = subprocess.Popen(
        [str(binary), str(cfg_path)],
        cwd=dir_,  # no stray config.toml / .env from the repo
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
    )
    lines: list[str] = []
    found: "queue.Queue[str | None]" = queue.Queue()

    def drain() -> None:  # keeps reading for the process's whole life so the pipe never fills
        announced = False
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if not announced:
                m = _LISTEN_RE.search(line)
                if m:
                    announced = True
                    found.put(m.group(1))
        if not announced:
            found.put(None)

    threading.Thread(target=drain, name="router-stderr", daemon=True).start()
    router = RouterProc(proc=proc, addr="", log_path=log_path, stderr_lines=lines)
    try:
        addr = found.get(timeout=STARTUP_TIMEOUT_S)
    except queue.Empty:
        router.stop()
        pytest.fail(
            f"router did not print 'listening on http://HOST:PORT' within {STARTUP_TIMEOUT_S}s; "
            f"stderr:\n{router.stderr_tail()}"
        )
    if addr is None:
        router.stop()
        pytest.fail(f"router exited (code {proc.returncode}) before listening; stderr:\n{router.stderr_tail()}")
    router.addr = addr
    return router


@pytest.fixture(scope="session")
def router(upstream: MockUpstream, tmp_path_factory: pytest.TempPathFactory) -> RouterProc:
    r = start_router(tmp_path_factory.mktemp("router"), upstream)
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture
def fresh_router(upstream: MockUpstream, tmp_path: Path) -> RouterProc:
    """A router of its own, so a test can count its log lines exactly."""
    r = start_router(tmp_path, upstream)
    try:
        yield r
    finally:
        r.stop()


def make_client(r: RouterProc):
    import openai

    return openai.OpenAI(base_url=r.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=30.0)


@pytest.fixture
def client(router: RouterProc):
    c = make_client(router)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def marker() -> str:
    """A unique string to put in a request so the upstream recording can be matched to it."""
    return f"m-{uuid.uuid4().hex[:12]}"


def read_log_lines(path: Path) -> list[dict[str, Any]]:
    """Complete (newline-terminated) JSON lines of the request log."""
    try:
        data = path.read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in data.split("\n")[:-1] if line.strip()]


def wait_for_log_lines(path: Path, n: int, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    lines = read_log_lines(path)
    while len(lines) < n and time.monotonic() < deadline:
        time.sleep(0.05)
        lines = read_log_lines(path)
    return lines


# --------------------------------------------------------------------------- every format
#
# A second mock upstream (multiformat_upstream.py) speaks OpenAI chat, Anthropic Messages and
# Ollama's native API; a second router, with its own config, routes by model prefix to a provider
# of each format. The fixtures above stay as they were for test_openai_sdk.py.

from multiformat_upstream import (  # noqa: E402
    ANTH_KEY,
    OPENAI_KEY,
    MultiUpstream,
    start_multi_upstream,
)

ROUTER_KEY_ENV = "OSR_TEST_ROUTER_KEY"


def multi_config(dir_: Path, mu: MultiUpstream) -> str:
    log_path = dir_ / "requests.jsonl"
    return f"""\
[server]
host = "127.0.0.1"
port = 0
workers = 1
api_key_env = "{ROUTER_KEY_ENV}"

[logging]
enabled = true
path = {_toml_str(str(log_path))}

[[providers]]
name = "up"
format = "openai"
base_url = {_toml_str(mu.root + "/v1")}
api_key_env = "OSR_TEST_OPENAI_KEY"

[[providers]]
name = "upr"
format = "openai"
base_url = {_toml_str(mu.root + "/v1")}
api_key_env = "OSR_TEST_OPENAI_KEY"
responses = true

[[providers]]
name = "anth"
format = "anthropic"
base_url = {_toml_str(mu.root)}
api_key_env = "OSR_TEST_ANTH_KEY"

[[providers]]
name = "anthv1"
format = "anthropic"
base_url = {_toml_str(mu.root + "/v1/")}
api_key_env = "OSR_TEST_ANTH_KEY"

[[providers]]
name = "oll"
format = "ollama"
base_url = {_toml_str(mu.root)}

[[providers]]
name = "mock"
format = "mock"

[[routers]]
type = "prefix"
model_prefix = "claude-"
provider = "anth"

[[routers]]
type = "prefix"
model_prefix = "anthv1-"
provider = "anthv1"

[[routers]]
type = "prefix"
model_prefix = "alias-claude-"
provider = "anth"
rewrite_model = "claude-real-model"

[[routers]]
type = "prefix"
model_prefix = "gpt-"
provider = "up"

[[routers]]
type = "prefix"
model_prefix = "gptr-"
provider = "upr"

[[routers]]
type = "prefix"
model_prefix = "llama"
provider = "oll"

[[routers]]
type = "prefix"
model_prefix = "mock"
provider = "mock"
"""


@pytest.fixture(scope="session")
def multi_upstream() -> MultiUpstream:
    state, server = start_multi_upstream()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def xrouter(multi_upstream: MultiUpstream, tmp_path_factory: pytest.TempPathFactory) -> RouterProc:
    """The router in front of every provider format (providers up, upr, anth, anthv1, oll, mock)."""
    dir_ = tmp_path_factory.mktemp("xrouter")
    r = start_router(
        dir_,
        None,
        config_text=multi_config(dir_, multi_upstream),
        extra_env={
            "OSR_TEST_OPENAI_KEY": OPENAI_KEY,
            "OSR_TEST_ANTH_KEY": ANTH_KEY,
            ROUTER_KEY_ENV: CLIENT_KEY,
        },
    )
    try:
        yield r
    finally:
        r.stop()


def make_anthropic_client(r: RouterProc, **kwargs: Any):
    import anthropic

    kwargs.setdefault("api_key", CLIENT_KEY)
    return anthropic.Anthropic(base_url=f"http://{r.addr}", max_retries=0, timeout=30.0, **kwargs)


@pytest.fixture
def aclient(xrouter: RouterProc):
    """The official `anthropic` SDK pointed at the multi-format router."""
    c = make_anthropic_client(xrouter)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def oclient(xrouter: RouterProc):
    """The official `openai` SDK pointed at the multi-format router."""
    c = make_client(xrouter)
    try:
        yield c
    finally:
        c.close()
