"""The router is a drop-in for the official `openai` Python SDK (README.md, docs/formats.md, docs/architecture.md, docs/providers.md).

Run with `.venv/bin/python -m pytest -q tests/sdk` after `cargo build --bins`
(scripts/test.sh does both). Fixtures live in conftest.py.
"""

from __future__ import annotations

import json

import openai
import pytest

from conftest import (
    CLIENT_KEY,
    COMPLETION_TOKENS,
    PROMPT_TOKENS,
    UPSTREAM_KEY,
    UPSTREAM_TEXT,
    make_client,
    read_log_lines,
    wait_for_log_lines,
)

LOG_KEYS = {
    "ts_ms", "id", "provider", "requested_model", "sent_model", "duration_ms", "tags",
    "plugins", "system", "messages", "response", "error", "trace_id", "status", "stream",
    "ttft_ms", "overhead_us", "input_tokens", "output_tokens", "response_tags", "attempts",
}  # fmt: skip


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def assert_int_header(headers, name: str) -> int:
    value = headers.get(name)
    assert value is not None, f"missing header {name}; got {dict(headers)}"
    assert value.strip().isdigit(), f"header {name} is not an integer: {value!r}"
    return int(value)


# --------------------------------------------------------------------------- upstream route


def test_plain_chat_through_upstream(client, upstream, marker):
    model = "gpt-test-model"
    raw = client.chat.completions.with_raw_response.create(
        model=model,
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": f"say hello {marker}"},
        ],
        temperature=0.25,
        max_tokens=32,
        extra_body={"custom_field": {"a": 1}, "another_unknown": [1, "two", None]},
    )
    assert raw.status_code == 200
    completion = raw.parse()
    assert completion.choices[0].message.content == UPSTREAM_TEXT
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == PROMPT_TOKENS
    assert completion.usage.completion_tokens == COMPLETION_TOKENS

    h = raw.headers
    assert h.get("x-router-provider") == "up"
    assert h.get("x-router-model") == model
    assert assert_int_header(h, "x-router-input-tokens") == PROMPT_TOKENS
    assert assert_int_header(h, "x-router-output-tokens") == COMPLETION_TOKENS
    assert_int_header(h, "x-router-overhead-us")
    # §6: omitted when empty - nothing in this request matches a keyword.
    assert "x-router-request-tags" not in h

    rec = upstream.find_one(marker)
    assert rec.path == "/v1/chat/completions"
    assert rec.headers.get("authorization") == f"Bearer {UPSTREAM_KEY}"
    for name, value in rec.raw_headers:
        assert CLIENT_KEY not in value, f"client key leaked upstream in header {name}: {value!r}"
    body = rec.body
    assert isinstance(body, dict), rec.body_bytes
    assert body["model"] == model
    assert body["custom_field"] == {"a": 1}
    assert body["another_unknown"] == [1, "two", None]
    assert body["temperature"] == 0.25
    assert body["max_tokens"] == 32
    assert body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": f"say hello {marker}"},
    ]
    assert "stream" not in body or body["stream"] is False
    # §6: same-format routes forward the client's bytes unchanged (model kept, no plugins key).
    assert rec.body_bytes == raw.http_request.content


def test_prefix_rewrite_model(client, upstream, marker):
    raw = client.chat.completions.with_raw_response.create(
        model="alias-x", messages=user(f"rewrite me {marker}")
    )
    assert raw.status_code == 200
    assert raw.parse().choices[0].message.content == UPSTREAM_TEXT
    assert raw.headers.get("x-router-provider") == "up"
    assert raw.headers.get("x-router-model") == "real-model"
    rec = upstream.find_one(marker)
    assert rec.body["model"] == "real-model"
    # §6: byte-for-byte except the model value.
    sent = json.loads(raw.http_request.content)
    sent["model"] = "real-model"
    assert rec.body == sent


def test_plugins_key_is_never_forwarded(client, upstream, marker):
    completion = client.chat.completions.create(
        model="gpt-test-model",
        messages=user(f"plugins {marker}"),
        extra_body={"plugins": [{"id": "response-healing"}], "keep_me": True},
    )
    # Prose is not JSON: response-healing leaves it untouched.
    assert completion.choices[0].message.content == UPSTREAM_TEXT
    body = upstream.find_one(marker).body
    assert "plugins" not in body, body
    assert body["keep_me"] is True


def test_streaming_through_upstream(client, upstream, marker):
    stream = client.chat.completions.create(
        model="gpt-test-model",
        messages=user(f"stream please {marker}"),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks, "no chunks received"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == UPSTREAM_TEXT
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    last = chunks[-1]
    assert last.usage is not None, f"last chunk has no usage: {last}"
    assert last.usage.completion_tokens == COMPLETION_TOKENS
    assert last.usage.prompt_tokens == PROMPT_TOKENS

    body = upstream.find_one(marker).body
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["model"] == "gpt-test-model"


def test_streaming_head_carries_routing_headers(client, upstream, marker):
    raw = client.chat.completions.with_raw_response.create(
        model="alias-stream",
        messages=user(f"write a python function {marker}"),
        stream=True,
    )
    # §6: the stream head carries what is known then: request tags, provider, model.
    assert raw.status_code == 200
    assert raw.headers.get("content-type", "").startswith("text/event-stream")
    assert raw.headers.get("x-router-provider") == "up"
    assert raw.headers.get("x-router-model") == "real-model"
    assert raw.headers.get("x-router-request-tags") == "code"
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert text == UPSTREAM_TEXT
    assert upstream.find_one(marker).body["model"] == "real-model"


def test_keyword_tags_header(client, upstream, marker):
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-test-model",
        messages=user(f"How do I sort a list in Python? {marker}"),
    )
    assert raw.status_code == 200
    assert raw.headers.get("x-router-request-tags") == "code"
    # Tags are never forwarded upstream: the body arrives as sent.
    body = upstream.find_one(marker).body
    assert body["messages"] == user(f"How do I sort a list in Python? {marker}")
    assert "tags" not in body


# --------------------------------------------------------------------------- mock provider


def test_mock_provider_plain_and_streaming(client, upstream, marker):
    before = len(upstream.requests)
    msgs = user(f"hello mock {marker}")

    raw = client.chat.completions.with_raw_response.create(model="mock-1", messages=msgs)
    assert raw.status_code == 200
    assert raw.headers.get("x-router-provider") == "mock"
    assert raw.headers.get("x-router-model") == "mock-1"
    first = raw.parse()
    content = first.choices[0].message.content
    assert isinstance(content, str) and content, f"mock content is empty: {first}"
    assert first.usage is not None and first.usage.completion_tokens > 0

    again = client.chat.completions.create(model="mock-1", messages=msgs)
    assert again.choices[0].message.content == content, "mock text is not deterministic"

    raw_stream = client.chat.completions.with_raw_response.create(
        model="mock-1", messages=msgs, stream=True, stream_options={"include_usage": True}
    )
    assert raw_stream.headers.get("x-router-provider") == "mock"
    chunks = list(raw_stream.parse())
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == content
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0

    assert len(upstream.requests) == before and not upstream.find(marker), "mock must not call the network"


# --------------------------------------------------------------------------- errors


def test_malformed_messages_is_400(client):
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model="m", messages="not-a-list")  # type: ignore[arg-type]
    assert ei.value.status_code == 400
    err = ei.value.response.json()
    assert isinstance(err.get("error"), dict) and err["error"].get("message"), err


def test_unknown_plugin_is_400_naming_it(client, upstream, marker):
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(
            model="gpt-test-model",
            messages=user(f"x {marker}"),
            extra_body={"plugins": [{"id": "no-such-plugin-xyz"}]},
        )
    assert ei.value.status_code == 400
    assert "no-such-plugin-xyz" in ei.value.message
    err = ei.value.response.json()
    assert "no-such-plugin-xyz" in err["error"]["message"], err
    assert not upstream.find(marker), "a rejected request must not reach the provider"


# --------------------------------------------------------------------------- request log


def test_log_has_one_line_per_request(fresh_router, upstream, marker):
    c = make_client(fresh_router)
    try:
        c.chat.completions.create(model="log-plain", messages=user(f"a {marker}"))
        c.chat.completions.create(model="alias-log", messages=user(f"b Python {marker}"))
        list(
            c.chat.completions.create(
                model="log-stream",
                messages=user(f"c {marker}"),
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        c.chat.completions.create(model="mock-log", messages=user(f"d {marker}"))
        list(c.chat.completions.create(model="mock-log-stream", messages=user(f"e {marker}"), stream=True))
        with pytest.raises(openai.BadRequestError):
            c.chat.completions.create(
                model="log-bad-plugin",
                messages=user(f"f {marker}"),
                extra_body={"plugins": [{"id": "no-such-plugin-xyz"}]},
            )
    finally:
        c.close()
    expected = 6

    lines = wait_for_log_lines(fresh_router.log_path, expected)
    assert len(lines) == expected, (
        f"expected {expected} log lines, got {len(lines)}: "
        f"{[line.get('requested_model') for line in lines]}\nrouter stderr:\n{fresh_router.stderr_tail()}"
    )
    for line in lines:
        missing = LOG_KEYS - line.keys()
        assert not missing, f"log line lacks {sorted(missing)}: {line}"
    ids = [line["id"] for line in lines]
    assert len(set(ids)) == len(ids), f"log ids are not unique: {ids}"

    by_model = {line["requested_model"]: line for line in lines}
    assert set(by_model) == {"log-plain", "alias-log", "log-stream", "mock-log", "mock-log-stream", "log-bad-plugin"}

    plain = by_model["log-plain"]
    assert plain["provider"] == "up"
    assert plain["sent_model"] == "log-plain"
    assert plain["status"] == 200
    assert plain["stream"] is False
    assert plain["input_tokens"] == PROMPT_TOKENS and plain["output_tokens"] == COMPLETION_TOKENS
    assert "up" in json.dumps(plain["attempts"])
    assert plain["error"] in (None, "")

    alias = by_model["alias-log"]
    assert alias["provider"] == "up" and alias["sent_model"] == "real-model"
    assert alias["tags"] == ["code"]

    stream = by_model["log-stream"]
    assert stream["provider"] == "up"
    assert stream["stream"] is True
    assert stream["status"] == 200
    assert stream["output_tokens"] == COMPLETION_TOKENS
    assert isinstance(stream["ttft_ms"], (int, float))

    for m in ("mock-log", "mock-log-stream"):
        assert by_model[m]["provider"] == "mock" and by_model[m]["status"] == 200
    assert by_model["mock-log-stream"]["stream"] is True

    bad = by_model["log-bad-plugin"]
    assert bad["status"] == 400
    assert bad["error"] and "no-such-plugin-xyz" in json.dumps(bad["error"])


def test_log_line_for_malformed_request(fresh_router):
    """§7: 'a line per request, also for errors' - including a body the router rejects."""
    c = make_client(fresh_router)
    try:
        with pytest.raises(openai.BadRequestError):
            c.chat.completions.create(model="log-malformed", messages="not-a-list")  # type: ignore[arg-type]
    finally:
        c.close()
    lines = wait_for_log_lines(fresh_router.log_path, 1)
    assert len(lines) == 1, f"expected 1 log line, got {lines}\nrouter stderr:\n{fresh_router.stderr_tail()}"
    assert not (LOG_KEYS - lines[0].keys()), lines[0]
    assert lines[0]["status"] == 400
    assert read_log_lines(fresh_router.log_path) == lines
