"""The router is a drop-in for the official `anthropic` Python SDK (README.md, docs/configuration.md, docs/formats.md).

`POST /v1/messages` and `/v1/messages/count_tokens` through the `xrouter` fixture to an
Anthropic-format provider (byte passthrough), an OpenAI-format one and an Ollama one (translated),
and the built-in mock. Fixtures: conftest.py; the upstream: multiformat_upstream.py.
"""

from __future__ import annotations

import json

import anthropic
import pytest

from conftest import CLIENT_KEY, make_anthropic_client
from multiformat_upstream import (
    ANTH_ERROR_MESSAGES,
    ANTH_KEY,
    ANTH_TOOL_PREFACE,
    COUNT_TOKENS,
    MIDFAIL_ANTH,
    MIDFAIL_OLLAMA,
    MIDFAIL_OPENAI,
    STRUCT_ANSWER,
    STRUCT_SCHEMA,
    TOOL_ARGS,
    ollama_error_message,
    openai_error_message,
    text_of,
)
from xformat import (
    ANTH,
    ANTH_TOOLS,
    ANTHROPIC_TEXT_SEQUENCE,
    OLL,
    TOOL_DESC,
    TOOL_NAME,
    TOOL_RESULT,
    TOOL_SCHEMA,
    UP,
    Route,
    assert_no_client_key,
    assert_translated_request,
    collapse,
    find_keys,
    header_count,
    json_loads_strict,
    sse_frames,
)

BETAS = "interleaved-thinking-2025-05-14,context-1m-2025-08-07"
CROSS = [pytest.param(UP, id="to-openai"), pytest.param(OLL, id="to-ollama")]
ALL_UPSTREAMS = [pytest.param(ANTH, id="to-anthropic"), *CROSS]


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def upstream_error_body(rec) -> dict:
    return json.loads(bytes(rec.response_bytes))


# --------------------------------------------------------------------------- passthrough (claude-)


def test_passthrough_plain(aclient, multi_upstream, marker):
    raw = aclient.messages.with_raw_response.create(
        model=ANTH.model,
        max_tokens=64,
        system="be brief",
        messages=user(f"say hello {marker}"),
        extra_body={"temperature": 0.5},  # anthropic 2.x create() has no temperature kwarg
        metadata={"user_id": "user-1"},
        extra_headers={"anthropic-beta": BETAS},
    )
    assert raw.status_code == 200
    msg = raw.parse()
    assert [b.type for b in msg.content] == ["text"]
    assert msg.content[0].text == ANTH.text
    assert msg.stop_reason == "end_turn"
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == ANTH.usage
    assert raw.headers.get("x-router-provider") == "anth"
    assert raw.headers.get("x-router-model") == ANTH.model

    rec = multi_upstream.find_one(marker)
    assert rec.path == "/v1/messages", rec.path
    # Byte passthrough: the upstream got exactly the client's body.
    assert rec.body_bytes == raw.http_request.content
    # ... and the provider's bytes came back unchanged.
    assert raw.http_response.content == bytes(rec.response_bytes)
    # anthropic-version / anthropic-beta forwarded unchanged; the provider's key, not the client's.
    assert rec.headers.get("anthropic-version") == raw.http_request.headers["anthropic-version"]
    assert rec.headers.get("anthropic-beta") == BETAS
    assert rec.headers.get("x-api-key") == ANTH_KEY
    assert header_count(rec, "x-api-key") == 1, rec.raw_headers
    assert_no_client_key(rec)


def test_passthrough_stream_bytes_and_events(aclient, multi_upstream, marker):
    with aclient.messages.with_streaming_response.create(
        model=ANTH.model,
        max_tokens=64,
        messages=user(f"stream please {marker}"),
        stream=True,
        extra_headers={"anthropic-beta": BETAS},
    ) as resp:
        assert resp.status_code == 200
        assert resp.headers.get("content-type", "").startswith("text/event-stream")
        assert resp.headers.get("x-router-provider") == "anth"
        data = resp.read()
    rec = multi_upstream.find_one(marker)
    assert rec.path == "/v1/messages"
    assert rec.body["stream"] is True
    assert rec.headers.get("anthropic-beta") == BETAS
    assert rec.headers.get("x-api-key") == ANTH_KEY
    assert_no_client_key(rec)
    # Same-format streams are relayed byte for byte.
    assert data == bytes(rec.response_bytes)


def test_passthrough_stream_sdk_helper(aclient, multi_upstream, marker):
    with aclient.messages.stream(
        model=ANTH.model, max_tokens=64, messages=user(f"stream helper {marker}")
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == ANTH.text
    assert final.content[0].text == ANTH.text
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == ANTH.usage
    rec = multi_upstream.find_one(marker)
    assert rec.path == "/v1/messages"
    assert rec.body.get("stream") is True


def test_passthrough_model_rewrite_is_the_only_change(aclient, multi_upstream, marker):
    raw = aclient.messages.with_raw_response.create(
        model="alias-claude-x", max_tokens=32, messages=user(f"rewrite {marker}")
    )
    assert raw.status_code == 200
    assert raw.headers.get("x-router-model") == "claude-real-model"
    rec = multi_upstream.find_one(marker)
    sent = raw.http_request.content
    assert sent.count(b'"alias-claude-x"') == 1
    assert rec.body_bytes == sent.replace(b'"alias-claude-x"', b'"claude-real-model"'), (
        f"client body {sent!r}\nupstream body {rec.body_bytes!r}"
    )


def test_passthrough_plugins_key_removed_rest_kept(aclient, multi_upstream, marker):
    raw = aclient.messages.with_raw_response.create(
        model=ANTH.model,
        max_tokens=32,
        messages=user(f"plugins {marker}"),
        extra_body={"plugins": [{"id": "response-healing"}]},
    )
    assert raw.status_code == 200
    rec = multi_upstream.find_one(marker)
    sent = json.loads(raw.http_request.content)
    assert "plugins" in sent
    del sent["plugins"]
    assert "plugins" not in rec.body, rec.body
    assert rec.body == sent
    assert list(rec.body) == list(sent), "key order changed"


def test_passthrough_base_url_ending_in_v1(aclient, multi_upstream, marker):
    raw = aclient.messages.with_raw_response.create(
        model="anthv1-model", max_tokens=32, messages=user(f"v1 base {marker}")
    )
    assert raw.status_code == 200
    assert raw.headers.get("x-router-provider") == "anthv1"
    rec = multi_upstream.find_one(marker)
    assert rec.path == "/v1/messages", f"base_url .../v1 must post to .../v1/messages, got {rec.path}"
    assert rec.body_bytes == raw.http_request.content


def test_passthrough_query_string_accepted(aclient, multi_upstream, marker):
    """Claude Code posts to /v1/messages?beta=true."""
    msg = aclient.messages.create(
        model=ANTH.model, max_tokens=32, messages=user(f"query {marker}"), extra_query={"beta": "true"}
    )
    assert msg.content[0].text == ANTH.text
    rec = multi_upstream.find_one(marker)
    assert rec.path.split("?", 1)[0] == "/v1/messages"


def test_inbound_key_as_x_api_key(xrouter, multi_upstream, marker, monkeypatch):
    """The router's own key may arrive as x-api-key; the provider still gets only its own key."""
    for var in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_CUSTOM_HEADERS"):
        monkeypatch.delenv(var, raising=False)
    c = make_anthropic_client(
        xrouter, api_key=None, auth_token=None, default_headers={"x-api-key": CLIENT_KEY}
    )
    try:
        raw = c.messages.with_raw_response.create(model=ANTH.model, max_tokens=32, messages=user(f"xkey {marker}"))
    finally:
        c.close()
    assert raw.http_request.headers.get("x-api-key") == CLIENT_KEY
    assert "authorization" not in raw.http_request.headers
    assert raw.status_code == 200
    rec = multi_upstream.find_one(marker)
    assert rec.headers.get("x-api-key") == ANTH_KEY
    assert header_count(rec, "x-api-key") == 1, rec.raw_headers
    assert_no_client_key(rec)


def test_wrong_router_key_is_401_in_anthropic_shape(xrouter, multi_upstream, marker):
    c = make_anthropic_client(xrouter, api_key="not-the-router-key")
    try:
        with pytest.raises(anthropic.AuthenticationError) as ei:
            c.messages.create(model=ANTH.model, max_tokens=32, messages=user(f"bad key {marker}"))
    finally:
        c.close()
    body = ei.value.body
    assert isinstance(body, dict) and body.get("type") == "error", body
    assert body["error"].get("type") == "authentication_error", body
    assert not multi_upstream.find(marker)


# --------------------------------------------------------------------------- upstream errors


@pytest.mark.parametrize(
    "status,exc", [(429, anthropic.RateLimitError), (529, anthropic.OverloadedError)], ids=["429", "529"]
)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_passthrough_upstream_error_unmodified(aclient, multi_upstream, marker, status, exc, stream):
    with pytest.raises(exc) as ei:
        if stream:
            with aclient.messages.stream(
                model=f"claude-err-{status}", max_tokens=32, messages=user(f"err {marker}")
            ) as s:
                s.get_final_message()
        else:
            aclient.messages.create(model=f"claude-err-{status}", max_tokens=32, messages=user(f"err {marker}"))
    e = ei.value
    rec = multi_upstream.find_one(marker)
    assert rec.response_status == status
    assert e.status_code == status
    assert e.api_message == ANTH_ERROR_MESSAGES[status]
    # Unmodified: Claude Code's recovery matches on the upstream's wording.
    assert e.response.content == bytes(rec.response_bytes), (
        f"error body changed:\n upstream {bytes(rec.response_bytes)!r}\n client   {e.response.content!r}"
    )


def test_passthrough_unknown_field_reaches_upstream_and_its_400_comes_back(aclient, multi_upstream, marker):
    with pytest.raises(anthropic.BadRequestError) as ei:
        aclient.messages.create(
            model=ANTH.model,
            max_tokens=32,
            messages=user(f"unknown field {marker}"),
            extra_body={"some_future_field": {"x": 1}},
        )
    rec = multi_upstream.find_one(marker)
    assert rec.body.get("some_future_field") == {"x": 1}
    assert ei.value.api_message == "some_future_field: Extra inputs are not permitted"
    assert ei.value.response.content == bytes(rec.response_bytes)


@pytest.mark.parametrize(
    "model,status,exc,etype,upstream_msg",
    [
        ("gpt-err-429", 429, anthropic.RateLimitError, "rate_limit_error", openai_error_message(429)),
        ("gpt-err-500", 500, anthropic.InternalServerError, "api_error", openai_error_message(500)),
        ("gpt-err-400", 400, anthropic.BadRequestError, "invalid_request_error", openai_error_message(400)),
        ("llama-err-404", 404, anthropic.NotFoundError, "not_found_error", ollama_error_message(404)),
        ("llama-err-500", 500, anthropic.InternalServerError, "api_error", ollama_error_message(500)),
    ],
)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_cross_format_upstream_error_translated(aclient, multi_upstream, marker, model, status, exc, etype, upstream_msg, stream):
    with pytest.raises(exc) as ei:
        if stream:
            with aclient.messages.stream(model=model, max_tokens=32, messages=user(f"err {marker}")) as s:
                s.get_final_message()
        else:
            aclient.messages.create(model=model, max_tokens=32, messages=user(f"err {marker}"))
    e = ei.value
    assert multi_upstream.find_one(marker).response_status == status
    assert e.status_code == status
    body = e.body
    assert isinstance(body, dict) and body.get("type") == "error", f"not an Anthropic error body: {body!r}"
    assert isinstance(body.get("error"), dict), body
    assert body["error"].get("type") == etype, body
    assert upstream_msg in (body["error"].get("message") or ""), body
    if model.startswith("gpt-"):
        # The OpenAI provider's back-off hint and request id survive translation.
        assert e.response.headers.get("retry-after") == "7", dict(e.response.headers)
        assert e.response.headers.get("retry-after-ms") == "7000"
        assert e.response.headers.get("x-request-id") == "req_mock_err"
        assert e.response.headers.get("x-ratelimit-remaining-requests") == "0"


# --------------------------------------------------------------------------- cross-format text


@pytest.mark.parametrize("route", CROSS)
def test_cross_format_plain(aclient, multi_upstream, marker, route: Route):
    raw = aclient.messages.with_raw_response.create(
        model=route.model,
        max_tokens=50,
        system="be brief",
        messages=user(f"say hello {marker}"),
        extra_body={"temperature": 0.5},  # anthropic 2.x create() has no temperature kwarg
    )
    assert raw.status_code == 200
    assert raw.headers.get("x-router-provider") == route.provider
    assert raw.headers.get("x-router-model") == route.model
    msg = raw.parse()
    assert msg.type == "message" and msg.role == "assistant"
    assert [b.type for b in msg.content] == ["text"], msg.content
    assert msg.content[0].text == route.text
    assert msg.stop_reason == "end_turn"
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == route.usage
    assert isinstance(msg.id, str) and msg.id
    rec = multi_upstream.find_one(marker)
    assert_translated_request(
        rec, route, system="be brief", user=f"say hello {marker}", stream=False, max_tokens=50, temperature=0.5
    )


@pytest.mark.parametrize("route", CROSS)
def test_cross_format_stop_sequences(aclient, multi_upstream, marker, route: Route):
    aclient.messages.create(
        model=route.model, max_tokens=50, messages=user(f"stop seq {marker}"), stop_sequences=["END", "STOP"]
    )
    body = multi_upstream.find_one(marker).body
    if route is UP:
        assert body.get("stop") == ["END", "STOP"], body
    else:
        assert (body.get("options") or {}).get("stop") == ["END", "STOP"], body


@pytest.mark.parametrize("route", CROSS)
def test_cross_format_stream_event_sequence(aclient, multi_upstream, marker, route: Route):
    stream = aclient.messages.create(
        model=route.model, max_tokens=50, system="be brief", messages=user(f"stream {marker}"), stream=True
    )
    events = list(stream)
    types = collapse([e.type for e in events])
    assert types == ANTHROPIC_TEXT_SEQUENCE, f"event sequence {[e.type for e in events]}"
    start = events[0]
    assert start.message.role == "assistant" and start.message.content == []
    block_start = next(e for e in events if e.type == "content_block_start")
    assert block_start.index == 0 and block_start.content_block.type == "text"
    deltas = [e for e in events if e.type == "content_block_delta"]
    assert all(d.index == 0 and d.delta.type == "text_delta" for d in deltas)
    assert "".join(d.delta.text for d in deltas) == route.text
    msg_delta = next(e for e in events if e.type == "message_delta")
    assert msg_delta.delta.stop_reason == "end_turn"
    inp, out = route.usage
    assert msg_delta.usage.output_tokens == out
    got_input = msg_delta.usage.input_tokens if msg_delta.usage.input_tokens is not None else start.message.usage.input_tokens
    assert got_input == inp, f"input tokens: message_start {start.message.usage}, message_delta {msg_delta.usage}"
    rec = multi_upstream.find_one(marker)
    assert_translated_request(rec, route, system="be brief", user=f"stream {marker}", stream=True, max_tokens=50)


@pytest.mark.parametrize("route", CROSS)
def test_cross_format_stream_sdk_helper(aclient, multi_upstream, marker, route: Route):
    with aclient.messages.stream(model=route.model, max_tokens=50, messages=user(f"helper {marker}")) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == route.text
    assert [b.type for b in final.content] == ["text"]
    assert final.content[0].text == route.text
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == route.usage


@pytest.mark.parametrize(
    "model", [pytest.param(UP.model, id="to-openai"), pytest.param(OLL.model, id="to-ollama"), pytest.param("mock-1", id="to-mock")]
)
def test_stream_frames_carry_event_lines(aclient, marker, model):
    """docs/formats.md: every frame has an `event:` line naming its data's type (the SDK drops
    frames without one)."""
    with aclient.messages.with_streaming_response.create(
        model=model, max_tokens=50, messages=user(f"frames {marker}"), stream=True
    ) as resp:
        assert resp.status_code == 200
        assert resp.headers.get("content-type", "").startswith("text/event-stream")
        raw = resp.read().decode()
    frames = sse_frames(raw)
    assert frames, raw
    for event, data in frames:
        assert event is not None, f"frame without an event: line: data={data!r}\nwhole stream:\n{raw}"
        obj = json_loads_strict(data)
        assert obj.get("type") == event, f"event {event!r} carries data type {obj.get('type')!r}"
    assert "[DONE]" not in raw
    assert frames[-1][0] == "message_stop", f"last frame {frames[-1]}"


# --------------------------------------------------------------------------- mock provider


def test_mock_provider_plain_and_stream(aclient, multi_upstream, marker):
    before = len(multi_upstream.requests)
    raw = aclient.messages.with_raw_response.create(model="mock-1", max_tokens=64, messages=user(f"mock {marker}"))
    assert raw.status_code == 200
    assert raw.headers.get("x-router-provider") == "mock"
    msg = raw.parse()
    assert msg.type == "message" and msg.role == "assistant"
    assert [b.type for b in msg.content] == ["text"]
    text = msg.content[0].text
    assert text
    assert msg.stop_reason == "end_turn"
    assert msg.usage.output_tokens > 0

    again = aclient.messages.create(model="mock-1", max_tokens=64, messages=user(f"mock {marker}"))
    assert again.content[0].text == text, "mock text is not deterministic"

    with aclient.messages.stream(model="mock-1", max_tokens=64, messages=user(f"mock {marker}")) as s:
        streamed = "".join(s.text_stream)
        final = s.get_final_message()
    assert streamed == text
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0
    assert len(multi_upstream.requests) == before and not multi_upstream.find(marker), "mock must not call the network"


# --------------------------------------------------------------------------- tool use


def _tool_uses(msg):
    return [b for b in msg.content if b.type == "tool_use"]


def _assert_no_empty_text(msg):
    empty = [b for b in msg.content if b.type == "text" and not b.text]
    assert not empty, f"empty text block(s) in {msg.content}"


def _assert_tool_defs_translated(rec, route: Route) -> None:
    if route is ANTH:
        return
    tools = rec.body.get("tools")
    assert isinstance(tools, list) and len(tools) == 1, rec.body
    t = tools[0]
    assert t.get("type") == "function", t
    assert t["function"]["name"] == TOOL_NAME
    assert t["function"].get("description") == TOOL_DESC
    assert t["function"]["parameters"] == TOOL_SCHEMA


@pytest.mark.parametrize("route", ALL_UPSTREAMS)
def test_tool_use_plain(aclient, multi_upstream, marker, route: Route):
    msg = aclient.messages.create(
        model=route.model, max_tokens=200, tools=ANTH_TOOLS, messages=user(f"weather in Paris? {marker}")
    )
    assert msg.stop_reason == "tool_use", msg
    uses = _tool_uses(msg)
    assert len(uses) == 1, msg.content
    assert uses[0].name == TOOL_NAME
    assert uses[0].input == TOOL_ARGS
    assert isinstance(uses[0].id, str) and uses[0].id
    _assert_no_empty_text(msg)
    if route is ANTH:
        assert [b.type for b in msg.content] == ["text", "tool_use"]
        assert msg.content[0].text == ANTH_TOOL_PREFACE
    else:
        assert [b.type for b in msg.content] == ["tool_use"], msg.content
    rec = multi_upstream.find_one(marker)
    _assert_tool_defs_translated(rec, route)


@pytest.mark.parametrize("route", ALL_UPSTREAMS)
def test_tool_use_stream(aclient, multi_upstream, marker, route: Route):
    with aclient.messages.stream(
        model=route.model, max_tokens=200, tools=ANTH_TOOLS, messages=user(f"weather in Paris? {marker}")
    ) as s:
        events = list(s)
        final = s.get_final_message()
    raw_types = [e.type for e in events if e.type not in ("text", "input_json", "citation", "thinking", "signature")]
    tool_start = [
        i for i, e in enumerate(events) if e.type == "content_block_start" and e.content_block.type == "tool_use"
    ]
    assert len(tool_start) == 1, f"events {raw_types}"
    start = events[tool_start[0]]
    assert start.content_block.name == TOOL_NAME
    assert start.content_block.id
    idx = start.index
    pieces = [
        e.delta.partial_json
        for e in events
        if e.type == "content_block_delta" and e.index == idx and e.delta.type == "input_json_delta"
    ]
    assert json_loads_strict("".join(pieces)) == TOOL_ARGS, pieces
    if route is not OLL:  # OpenAI and Anthropic stream arguments in pieces: relay them as they come
        assert len(pieces) >= 2, f"arguments arrived in {len(pieces)} piece(s): {pieces}"
    stops = [e for e in events if e.type == "content_block_stop" and e.index == idx]
    assert len(stops) == 1
    assert collapse(raw_types)[-2:] == ["message_delta", "message_stop"], raw_types
    assert final.stop_reason == "tool_use"
    uses = _tool_uses(final)
    assert len(uses) == 1 and uses[0].input == TOOL_ARGS and uses[0].name == TOOL_NAME
    _assert_no_empty_text(final)
    rec = multi_upstream.find_one(marker)
    assert rec.body.get("stream") is True
    _assert_tool_defs_translated(rec, route)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("route", ALL_UPSTREAMS)
def test_tool_result_turn(aclient, multi_upstream, marker, route: Route, stream):
    question = user(f"weather in Paris? {marker}")
    first = aclient.messages.create(model=route.model, max_tokens=200, tools=ANTH_TOOLS, messages=question)
    use = _tool_uses(first)[0]
    messages = [
        *question,
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": TOOL_RESULT}]},
    ]
    if stream:
        with aclient.messages.stream(model=route.model, max_tokens=200, tools=ANTH_TOOLS, messages=messages) as s:
            final = s.get_final_message()
    else:
        final = aclient.messages.create(model=route.model, max_tokens=200, tools=ANTH_TOOLS, messages=messages)
    assert [b.type for b in final.content] == ["text"], final.content
    assert final.content[0].text == f"tool said: {TOOL_RESULT}"
    assert final.stop_reason == "end_turn"

    recs = multi_upstream.find(marker)
    assert len(recs) == 2, [r.path for r in recs]
    body = recs[1].body
    msgs = body["messages"]
    if route is ANTH:
        assert [m["role"] for m in msgs] == ["user", "assistant", "user"], msgs
        assert msgs[2]["content"][0]["tool_use_id"] == use.id
    elif route is UP:
        assert [m["role"] for m in msgs] == ["user", "assistant", "tool"], msgs
        calls = msgs[1].get("tool_calls") or []
        assert len(calls) == 1, msgs[1]
        assert calls[0]["function"]["name"] == TOOL_NAME
        assert json_loads_strict(calls[0]["function"]["arguments"]) == TOOL_ARGS
        assert calls[0]["id"] == use.id
        assert msgs[2]["tool_call_id"] == use.id
        assert text_of(msgs[2]["content"]) == TOOL_RESULT
    else:
        assert [m["role"] for m in msgs] == ["user", "assistant", "tool"], msgs
        calls = msgs[1].get("tool_calls") or []
        assert len(calls) == 1, msgs[1]
        assert calls[0]["function"]["name"] == TOOL_NAME
        assert calls[0]["function"]["arguments"] == TOOL_ARGS
        assert msgs[2]["content"] == TOOL_RESULT


# --------------------------------------------------------------------------- count_tokens


def test_count_tokens_anthropic(aclient, multi_upstream, marker):
    raw = aclient.messages.with_raw_response.count_tokens(
        model=ANTH.model,
        system="be brief",
        messages=user(f"count me {marker}"),
        tools=ANTH_TOOLS,
        extra_headers={"anthropic-beta": BETAS},
    )
    assert raw.status_code == 200
    assert raw.parse().input_tokens == COUNT_TOKENS
    assert raw.headers.get("x-router-provider") == "anth"
    rec = multi_upstream.find_one(marker)
    assert rec.path == "/v1/messages/count_tokens"
    assert rec.body_bytes == raw.http_request.content
    assert rec.headers.get("x-api-key") == ANTH_KEY
    assert rec.headers.get("anthropic-version") == raw.http_request.headers["anthropic-version"]
    assert rec.headers.get("anthropic-beta") == BETAS
    assert_no_client_key(rec)


@pytest.mark.parametrize("model", [UP.model, OLL.model], ids=["openai-route", "ollama-route"])
def test_count_tokens_non_anthropic_route_is_an_error(aclient, multi_upstream, marker, model):
    with pytest.raises(anthropic.APIStatusError) as ei:
        aclient.messages.count_tokens(model=model, messages=user(f"count me {marker}"))
    e = ei.value
    assert 400 <= e.status_code < 600, e.status_code
    body = e.body
    assert isinstance(body, dict) and body.get("type") == "error", f"not an Anthropic error body: {body!r}"
    assert body["error"].get("message"), body
    assert not multi_upstream.find(marker), "count_tokens must not be sent to a non-Anthropic provider"


# --------------------------------------------------------------------------- dropped / translated fields


@pytest.mark.parametrize("route", CROSS)
def test_anthropic_only_fields_dropped(aclient, multi_upstream, marker, route: Route):
    msg = aclient.messages.create(
        model=route.model,
        max_tokens=2048,
        system=[{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
        messages=[
            {
                "role": "user",
                "content": [{"type": "text", "text": f"hello {marker}", "cache_control": {"type": "ephemeral"}}],
            }
        ],
        thinking={"type": "enabled", "budget_tokens": 1024},
        metadata={"user_id": "user-1"},
        extra_headers={"anthropic-beta": BETAS},
        extra_body={
            "context_management": {"edits": [{"type": "clear_tool_uses_20250919"}]},
            "output_config": {"effort": "low"},
        },
    )
    assert msg.content[0].text == route.text
    rec = multi_upstream.find_one(marker)
    leaked = find_keys(
        rec.body, {"thinking", "budget_tokens", "cache_control", "context_management", "metadata", "output_config", "effort"}
    )
    assert not leaked, f"Anthropic-only fields sent to a {route.provider} upstream at {leaked}: {rec.body}"
    assert_translated_request(rec, route, system="be brief", user=f"hello {marker}", stream=False, max_tokens=2048)


@pytest.mark.parametrize("route", CROSS)
def test_structured_output_translated(aclient, multi_upstream, marker, route: Route):
    msg = aclient.messages.create(
        model=route.model,
        max_tokens=200,
        messages=user(f"answer as JSON {marker}"),
        output_config={"format": {"type": "json_schema", "schema": STRUCT_SCHEMA}},
    )
    assert json_loads_strict(msg.content[0].text) == STRUCT_ANSWER
    body = multi_upstream.find_one(marker).body
    if route is UP:
        rf = body.get("response_format")
        assert isinstance(rf, dict) and rf.get("type") == "json_schema", body
        assert rf["json_schema"]["schema"] == STRUCT_SCHEMA, rf
        assert rf["json_schema"].get("name"), rf
    else:
        assert body.get("format") == STRUCT_SCHEMA, body


# --------------------------------------------------------------------------- mid-stream failures


@pytest.mark.parametrize(
    "model,upstream_msg",
    [
        pytest.param("claude-midfail", MIDFAIL_ANTH, id="anthropic-error-event"),
        pytest.param("gpt-midfail", MIDFAIL_OPENAI, id="openai-error-payload"),
        pytest.param("llama-midfail", MIDFAIL_OLLAMA, id="ollama-error-line"),
        pytest.param("gpt-middrop", None, id="openai-connection-drop"),
        pytest.param("llama-middrop", None, id="ollama-connection-drop"),
        pytest.param("claude-middrop", None, id="anthropic-connection-drop"),
    ],
)
def test_mid_stream_failure_ends_with_error_event(aclient, multi_upstream, marker, model, upstream_msg):
    received: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as ei:
        with aclient.messages.stream(model=model, max_tokens=50, messages=user(f"fail {marker}")) as s:
            for t in s.text_stream:
                received.append(t)
    e = ei.value
    body = e.body
    assert isinstance(body, dict) and body.get("type") == "error", f"not an Anthropic error event: {body!r}"
    assert isinstance(body.get("error"), dict) and body["error"].get("type") and body["error"].get("message"), body
    if upstream_msg is not None:
        assert upstream_msg in body["error"]["message"], body
    assert "".join(received), "the text before the failure should have been relayed"
    assert multi_upstream.find_one(marker).body.get("stream") is True
