"""SSE keep-alive comments reach the official SDKs during a silent prefill, and the SDKs
parse the stream around them (docs/reliability.md E9).

A gated upstream sends its stream head at once and its first token only when the test
releases it; the test releases it after the client's own transport (a tee on the SDK's
httpx client) has seen two `: keep-alive` comments, so nothing here waits on time.
"""

from __future__ import annotations

import json
import socketserver
import threading
from pathlib import Path
from typing import Any, Iterator

import httpx2 as httpx
import pytest

from conftest import CLIENT_KEY, _toml_str, start_router

PIECES = ["kept", " alive", " through", " prefill"]


class GatedUpstream(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.gate = threading.Event()
        self.requests: list[dict[str, Any]] = []


class _Handler(socketserver.StreamRequestHandler):
    server: GatedUpstream

    def handle(self) -> None:
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            b = self.rfile.read(1)
            if not b:
                return
            head += b
        length = 0
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        body = json.loads(self.rfile.read(length))
        self.server.requests.append(body)
        self.wfile.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        self.wfile.flush()
        # The prefill: silent until the test says so.
        assert self.server.gate.wait(20), "never released"

        def chunk(data: bytes) -> bytes:
            return f"{len(data):x}\r\n".encode() + data + b"\r\n"

        def event(delta: dict[str, Any], finish: str | None) -> bytes:
            c = {
                "id": "chatcmpl-gated",
                "object": "chat.completion.chunk",
                "created": 1700000000,
                "model": body.get("model", "m"),
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }
            return chunk(b"data: " + json.dumps(c).encode() + b"\n\n")

        out = event({"role": "assistant", "content": ""}, None)
        for p in PIECES:
            out += event({"content": p}, None)
        out += event({}, "stop") + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"
        self.wfile.write(out)
        self.wfile.flush()


class _Tee(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, sink: "Seen") -> None:
        self.inner = inner
        self.sink = sink

    def __iter__(self) -> Iterator[bytes]:
        for part in self.inner:
            self.sink.add(part)
            yield part

    def close(self) -> None:
        self.inner.close()


class Seen:
    """Every response byte the SDK's transport received, with a wait for a condition on them."""

    def __init__(self) -> None:
        self.data = b""
        self.cond = threading.Condition()

    def add(self, part: bytes) -> None:
        with self.cond:
            self.data += part
            self.cond.notify_all()

    def wait_for_comments(self, n: int) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.data.count(b": keep-alive\n\n") >= n, timeout=20)


class _TeeTransport(httpx.HTTPTransport):
    def __init__(self, seen: Seen) -> None:
        super().__init__()
        self.seen = seen

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        r = super().handle_request(request)
        return httpx.Response(
            status_code=r.status_code,
            headers=r.headers,
            stream=_Tee(r.stream, self.seen),  # type: ignore[arg-type]
            extensions=r.extensions,
            request=request,
        )


@pytest.fixture
def gated_router(tmp_path: Path):
    up = GatedUpstream()
    threading.Thread(target=up.serve_forever, daemon=True).start()
    host, port = up.server_address
    config = f"""\
[server]
host = "127.0.0.1"
port = 0
workers = 1
sse_keepalive_ms = 40

[logging]
enabled = true
path = {_toml_str(str(tmp_path / "requests.jsonl"))}

[[providers]]
name = "gated"
format = "openai"
base_url = "http://{host}:{port}/v1"

[[routers]]
type = "fallback"
"""
    r = start_router(tmp_path, None, config_text=config)
    try:
        yield r, up
    finally:
        r.stop()
        up.shutdown()
        up.server_close()


def _release_after_comments(seen: Seen, up: GatedUpstream) -> threading.Thread:
    def run() -> None:
        seen.wait_for_comments(2)
        up.gate.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _comments_before_first_event(seen: Seen) -> None:
    found = [i for i in (seen.data.find(b"data: "), seen.data.find(b"event: ")) if i >= 0]
    first = min(found, default=-1)
    assert first > 0, seen.data
    assert seen.data[:first].count(b": keep-alive\n\n") >= 2, seen.data[:first]


def test_openai_sdk_streams_through_keepalive_comments(gated_router) -> None:
    import openai

    router, up = gated_router
    seen = Seen()
    client = openai.OpenAI(
        base_url=router.base_url,
        api_key=CLIENT_KEY,
        max_retries=0,
        timeout=30.0,
        http_client=httpx.Client(transport=_TeeTransport(seen)),
    )
    t = _release_after_comments(seen, up)
    stream = client.chat.completions.create(
        model="gpt-gated", messages=[{"role": "user", "content": "wait for it"}], stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    t.join(5)
    assert text == "".join(PIECES)
    _comments_before_first_event(seen)
    assert seen.data.endswith(b"data: [DONE]\n\n")


def test_anthropic_sdk_streams_through_keepalive_comments_on_a_translated_route(gated_router) -> None:
    import anthropic

    router, up = gated_router
    seen = Seen()
    client = anthropic.Anthropic(
        base_url=f"http://{router.addr}",
        api_key=CLIENT_KEY,
        max_retries=0,
        timeout=30.0,
        http_client=httpx.Client(transport=_TeeTransport(seen)),
    )
    t = _release_after_comments(seen, up)
    with client.messages.stream(
        model="claude-gated", max_tokens=64, messages=[{"role": "user", "content": "wait for it"}]
    ) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    t.join(5)
    assert text == "".join(PIECES)
    assert final.stop_reason == "end_turn"
    _comments_before_first_event(seen)
    assert b"event: message_stop" in seen.data
    # The upstream was spoken to in its own format (translated from Messages).
    assert up.requests[-1]["messages"][-1]["content"] == "wait for it"
