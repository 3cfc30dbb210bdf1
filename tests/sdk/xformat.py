"""Shared expectations and checks for the every-format SDK tests.

The router under test is the `xrouter` fixture (conftest.py) in front of multiformat_upstream.py:
model prefix `claude-` -> provider `anth` (anthropic), `gpt-` -> `up` (openai), `llama` -> `oll`
(ollama), `mock` -> the built-in mock.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from conftest import CLIENT_KEY
from multiformat_upstream import (
    ANTH_KEY,
    ANTH_TEXT,
    ANTH_USAGE,
    OLLAMA_TEXT,
    OLLAMA_USAGE,
    OPENAI_KEY,
    OPENAI_TEXT,
    OPENAI_USAGE,
    STRUCT_SCHEMA,
    Recorded,
    text_of,
)


@dataclass(frozen=True)
class Route:
    provider: str  # router provider name (X-Router-Provider)
    model: str  # model the client asks for
    text: str  # the upstream's plain reply
    usage: tuple[int, int]  # (input, output) tokens the upstream reports
    path: str  # upstream path the router must call


ANTH = Route("anth", "claude-sonnet-test", ANTH_TEXT, ANTH_USAGE, "/v1/messages")
UP = Route("up", "gpt-test-model", OPENAI_TEXT, OPENAI_USAGE, "/v1/chat/completions")
OLL = Route("oll", "llama3.2:latest", OLLAMA_TEXT, OLLAMA_USAGE, "/api/chat")

TOOL_NAME = "get_weather"
TOOL_DESC = "Get the current weather for a city"
TOOL_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city"],
}
TOOL_RESULT = "22C and sunny"

ANTH_TOOLS = [{"name": TOOL_NAME, "description": TOOL_DESC, "input_schema": TOOL_SCHEMA}]
CHAT_TOOLS = [{"type": "function", "function": {"name": TOOL_NAME, "description": TOOL_DESC, "parameters": TOOL_SCHEMA}}]
RESP_TOOLS = [{"type": "function", "name": TOOL_NAME, "description": TOOL_DESC, "parameters": TOOL_SCHEMA, "strict": False}]

CHAT_RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "answer", "schema": STRUCT_SCHEMA, "strict": True}}

# Responses text turn, per docs/formats.md (consecutive deltas collapsed into one).
RESPONSES_TEXT_SEQUENCE = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]

# Anthropic text turn, per docs/formats.md (pings dropped, consecutive deltas collapsed).
ANTHROPIC_TEXT_SEQUENCE = [
    "message_start",
    "content_block_start",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
]


def collapse(types: list[str]) -> list[str]:
    """Drop consecutive duplicates: [a, b, b, b, c] -> [a, b, c]."""
    out: list[str] = []
    for t in types:
        if not out or out[-1] != t:
            out.append(t)
    return out


def sse_frames(raw: str) -> list[tuple[str | None, str]]:
    """(event, data) of each SSE frame in `raw` (comment-only frames dropped)."""
    frames: list[tuple[str | None, str]] = []
    for block in raw.replace("\r\n", "\n").split("\n\n"):
        event = None
        data: list[str] = []
        for line in block.split("\n"):
            if line.startswith("event:"):
                event = line[len("event:") :].strip()
            elif line.startswith("data:"):
                data.append(line[len("data:") :].lstrip(" "))
        if event is not None or data:
            frames.append((event, "\n".join(data)))
    return frames


def assert_no_client_key(rec: Recorded) -> None:
    for name, value in rec.raw_headers:
        assert CLIENT_KEY not in value, f"the client's key leaked upstream in header {name}: {value!r}"


def header_count(rec: Recorded, name: str) -> int:
    return sum(1 for k, _ in rec.raw_headers if k.lower() == name)


def roles(msgs: list[dict[str, Any]]) -> list[str]:
    return [m.get("role") for m in msgs]


def max_tokens_of(body: dict[str, Any]) -> Any:
    return body.get("max_tokens", body.get("max_completion_tokens"))


def assert_translated_request(
    rec: Recorded,
    route: Route,
    *,
    system: str | None,
    user: str,
    stream: bool,
    max_tokens: int | None = None,
    temperature: float | None = None,
) -> None:
    """A cross-format request reached `route`'s upstream in that provider's own format."""
    assert rec.method == "POST"
    assert rec.path.split("?", 1)[0] == route.path, f"upstream path {rec.path!r}, expected {route.path!r}"
    assert_no_client_key(rec)
    body = rec.body
    assert isinstance(body, dict), rec.body_bytes
    assert "plugins" not in body, body
    if route is UP:
        assert rec.headers.get("authorization") == f"Bearer {OPENAI_KEY}", rec.headers
        msgs = body["messages"]
        want_roles = (["system"] if system is not None else []) + ["user"]
        got_roles = ["system" if r == "developer" else r for r in roles(msgs)]
        assert got_roles == want_roles, f"openai upstream messages {msgs}"
        if system is not None:
            assert text_of(msgs[0]["content"]) == system, msgs
        assert text_of(msgs[-1]["content"]) == user, msgs
        if max_tokens is not None:
            assert max_tokens_of(body) == max_tokens, body
        if temperature is not None:
            assert body.get("temperature") == temperature, body
        if stream:
            assert body.get("stream") is True, body
        else:
            assert body.get("stream") in (None, False), body
    elif route is ANTH:
        assert rec.headers.get("x-api-key") == ANTH_KEY, rec.headers
        assert header_count(rec, "x-api-key") == 1, rec.raw_headers
        assert rec.headers.get("anthropic-version"), f"no anthropic-version header upstream: {rec.headers}"
        msgs = body["messages"]
        assert roles(msgs) == ["user"], msgs
        assert text_of(msgs[0]["content"]) == user, msgs
        if system is not None:
            assert text_of(body.get("system")) == system, body
        else:
            assert not body.get("system"), body
        assert isinstance(body.get("max_tokens"), int), body
        if max_tokens is not None:
            assert body["max_tokens"] == max_tokens, body
        if temperature is not None:
            assert body.get("temperature") == temperature, body
        if stream:
            assert body.get("stream") is True, body
        else:
            assert body.get("stream") in (None, False), body
    elif route is OLL:
        msgs = body["messages"]
        want_roles = (["system"] if system is not None else []) + ["user"]
        assert roles(msgs) == want_roles, msgs
        for m in msgs:
            assert isinstance(m.get("content"), str), f"ollama content must be a string: {m}"
        if system is not None:
            assert msgs[0]["content"] == system, msgs
        assert msgs[-1]["content"] == user, msgs
        # Ollama streams unless told otherwise: the router must say which it wants.
        assert "stream" in body and body["stream"] is stream, f"ollama 'stream' must be explicit {stream}: {body}"
        opts = body.get("options") or {}
        if max_tokens is not None:
            assert opts.get("num_predict") == max_tokens, body
        if temperature is not None:
            assert opts.get("temperature") == temperature, body
    else:  # pragma: no cover
        raise AssertionError(route)


def find_keys(obj: Any, names: set[str], path: str = "$") -> list[str]:
    """JSON paths of every object key in `names`, anywhere in `obj`."""
    hits: list[str] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in names:
                hits.append(f"{path}.{k}")
            hits += find_keys(v, names, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            hits += find_keys(v, names, f"{path}[{i}]")
    return hits


def json_loads_strict(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as e:
        raise AssertionError(f"not valid JSON: {text!r} ({e})") from None
