"""`POST /v1/chat/completions` with the official `openai` SDK to non-OpenAI providers:
`claude-` -> Anthropic Messages, `llama` -> Ollama native. Plain and streaming (include_usage),
tool calls both ways, structured outputs, errors. Fixtures: conftest.py; upstream:
multiformat_upstream.py.
"""

from __future__ import annotations

import openai
import pytest

from multiformat_upstream import (
    ANTH_ERROR_MESSAGES,
    ANTH_TOOL_PREFACE,
    MIDFAIL_ANTH,
    MIDFAIL_OLLAMA,
    STRUCT_ANSWER,
    STRUCT_SCHEMA,
    TOOL_ARGS,
    ollama_error_message,
    text_of,
)
from xformat import (
    ANTH,
    CHAT_RESPONSE_FORMAT,
    CHAT_TOOLS,
    OLL,
    TOOL_DESC,
    TOOL_NAME,
    TOOL_RESULT,
    TOOL_SCHEMA,
    Route,
    assert_translated_request,
    json_loads_strict,
)

ROUTES = [pytest.param(ANTH, id="to-anthropic"), pytest.param(OLL, id="to-ollama")]


def _msgs(marker: str, text: str = "say hello") -> list[dict]:
    return [{"role": "system", "content": "be brief"}, {"role": "user", "content": f"{text} {marker}"}]


@pytest.mark.parametrize("route", ROUTES)
def test_chat_plain(oclient, multi_upstream, marker, route: Route):
    raw = oclient.chat.completions.with_raw_response.create(
        model=route.model, messages=_msgs(marker), max_tokens=40, temperature=0.5
    )
    assert raw.status_code == 200
    assert raw.headers.get("x-router-provider") == route.provider
    assert raw.headers.get("x-router-model") == route.model
    inp, out = route.usage
    assert raw.headers.get("x-router-input-tokens") == str(inp)
    assert raw.headers.get("x-router-output-tokens") == str(out)
    c = raw.parse()
    assert c.object == "chat.completion"
    assert len(c.choices) == 1
    assert c.choices[0].message.role == "assistant"
    assert c.choices[0].message.content == route.text
    assert c.choices[0].finish_reason == "stop"
    assert c.usage is not None
    assert (c.usage.prompt_tokens, c.usage.completion_tokens, c.usage.total_tokens) == (inp, out, inp + out)
    assert_translated_request(
        multi_upstream.find_one(marker), route, system="be brief", user=f"say hello {marker}",
        stream=False, max_tokens=40, temperature=0.5,
    )  # fmt: skip


@pytest.mark.parametrize("route", ROUTES)
def test_chat_stream_include_usage(oclient, multi_upstream, marker, route: Route):
    chunks = list(
        oclient.chat.completions.create(
            model=route.model,
            messages=_msgs(marker, "stream"),
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks
    assert all(ch.object == "chat.completion.chunk" for ch in chunks)
    assert len({ch.id for ch in chunks}) == 1, f"chunk ids differ: {[ch.id for ch in chunks]}"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == route.text
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finishes == ["stop"]
    last = chunks[-1]
    assert last.choices == [], f"usage chunk must have no choices: {last}"
    inp, out = route.usage
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (inp, out, inp + out)
    assert all(ch.usage is None for ch in chunks[:-1]), "only the final chunk carries usage"
    assert_translated_request(
        multi_upstream.find_one(marker), route, system="be brief", user=f"stream {marker}", stream=True
    )


@pytest.mark.parametrize("route", ROUTES)
def test_chat_stream_without_usage(oclient, marker, route: Route):
    chunks = list(oclient.chat.completions.create(model=route.model, messages=_msgs(marker, "nousage"), stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == route.text
    assert all(ch.usage is None for ch in chunks), "no usage chunk unless include_usage was asked for"
    assert all(ch.choices for ch in chunks)


# --------------------------------------------------------------------------- tools


def _assert_tool_defs(body: dict, route: Route) -> None:
    tools = body.get("tools")
    assert isinstance(tools, list) and len(tools) == 1, body
    t = tools[0]
    if route is ANTH:
        assert t.get("name") == TOOL_NAME and t.get("input_schema") == TOOL_SCHEMA, t
        assert t.get("description") == TOOL_DESC, t
    else:
        assert t.get("type") == "function", t
        assert t["function"]["name"] == TOOL_NAME and t["function"]["parameters"] == TOOL_SCHEMA, t


@pytest.mark.parametrize("route", ROUTES)
def test_chat_tool_call_plain(oclient, multi_upstream, marker, route: Route):
    c = oclient.chat.completions.create(
        model=route.model, messages=[{"role": "user", "content": f"weather in Paris? {marker}"}], tools=CHAT_TOOLS
    )
    choice = c.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    calls = choice.message.tool_calls or []
    assert len(calls) == 1, choice.message
    assert calls[0].type == "function"
    assert isinstance(calls[0].id, str) and calls[0].id
    assert calls[0].function.name == TOOL_NAME
    assert json_loads_strict(calls[0].function.arguments) == TOOL_ARGS
    if route is ANTH:
        assert choice.message.content == ANTH_TOOL_PREFACE
    else:
        assert not choice.message.content
    _assert_tool_defs(multi_upstream.find_one(marker).body, route)


@pytest.mark.parametrize("route", ROUTES)
def test_chat_tool_call_stream(oclient, multi_upstream, marker, route: Route):
    chunks = list(
        oclient.chat.completions.create(
            model=route.model,
            messages=[{"role": "user", "content": f"weather in Paris? {marker}"}],
            tools=CHAT_TOOLS,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    frags = [tc for ch in chunks if ch.choices for tc in (ch.choices[0].delta.tool_calls or [])]
    assert frags, f"no tool call fragments in {chunks}"
    by_index: dict[int, list] = {}
    for f in frags:
        by_index.setdefault(f.index, []).append(f)
    assert list(by_index) == [0], f"tool call indexes {list(by_index)}"
    first = by_index[0][0]
    assert first.id and first.type == "function" and first.function.name == TOOL_NAME, first
    assert all(f.id is None for f in by_index[0][1:]), "only the first fragment carries the id"
    args = "".join(f.function.arguments or "" for f in by_index[0])
    assert json_loads_strict(args) == TOOL_ARGS
    if route is ANTH:  # streamed in pieces upstream: relayed as they come
        assert sum(1 for f in by_index[0] if f.function.arguments) >= 2, by_index[0]
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finishes == ["tool_calls"], finishes
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == (ANTH_TOOL_PREFACE if route is ANTH else ""), text
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    rec = multi_upstream.find_one(marker)
    assert rec.body.get("stream") is True
    _assert_tool_defs(rec.body, route)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("route", ROUTES)
def test_chat_tool_result_turn(oclient, multi_upstream, marker, route: Route, stream):
    question = [{"role": "user", "content": f"weather in Paris? {marker}"}]
    first = oclient.chat.completions.create(model=route.model, messages=question, tools=CHAT_TOOLS)
    msg = first.choices[0].message
    call = msg.tool_calls[0]
    messages = [
        *question,
        msg.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": TOOL_RESULT},
    ]
    if stream:
        chunks = list(
            oclient.chat.completions.create(model=route.model, messages=messages, tools=CHAT_TOOLS, stream=True)
        )
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    else:
        second = oclient.chat.completions.create(model=route.model, messages=messages, tools=CHAT_TOOLS)
        text = second.choices[0].message.content
        finishes = [second.choices[0].finish_reason]
    assert text == f"tool said: {TOOL_RESULT}"
    assert finishes == ["stop"]

    recs = multi_upstream.find(marker)
    assert len(recs) == 2
    msgs = recs[1].body["messages"]
    if route is ANTH:
        assert [m["role"] for m in msgs] == ["user", "assistant", "user"], msgs
        blocks = msgs[1]["content"]
        assert isinstance(blocks, list), msgs[1]
        uses = [b for b in blocks if b.get("type") == "tool_use"]
        assert len(uses) == 1 and uses[0]["id"] == call.id and uses[0]["name"] == TOOL_NAME, blocks
        assert uses[0]["input"] == TOOL_ARGS
        texts = [b for b in blocks if b.get("type") == "text"]
        assert [b["text"] for b in texts] == [ANTH_TOOL_PREFACE], blocks
        results = [b for b in msgs[2]["content"] if b.get("type") == "tool_result"]
        assert len(results) == 1 and results[0]["tool_use_id"] == call.id, msgs[2]
        assert text_of(results[0].get("content")) == TOOL_RESULT
    else:
        assert [m["role"] for m in msgs] == ["user", "assistant", "tool"], msgs
        calls = msgs[1].get("tool_calls") or []
        assert len(calls) == 1 and calls[0]["function"]["name"] == TOOL_NAME, msgs[1]
        assert calls[0]["function"]["arguments"] == TOOL_ARGS
        assert msgs[2]["content"] == TOOL_RESULT


# --------------------------------------------------------------------------- structured output


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("route", ROUTES)
def test_chat_structured_output(oclient, multi_upstream, marker, route: Route, stream):
    kwargs = dict(
        model=route.model,
        messages=[{"role": "user", "content": f"answer as JSON {marker}"}],
        response_format=CHAT_RESPONSE_FORMAT,
    )
    if stream:
        text = "".join(
            ch.choices[0].delta.content or ""
            for ch in oclient.chat.completions.create(**kwargs, stream=True)
            if ch.choices
        )
    else:
        text = oclient.chat.completions.create(**kwargs).choices[0].message.content
    assert json_loads_strict(text) == STRUCT_ANSWER
    body = multi_upstream.find_one(marker).body
    assert "response_format" not in body, body
    if route is ANTH:
        fmt = (body.get("output_config") or {}).get("format")
        assert isinstance(fmt, dict), f"no output_config.format upstream: {body}"
        assert fmt.get("type") == "json_schema", fmt
        assert fmt.get("schema") == STRUCT_SCHEMA, fmt
    else:
        assert body.get("format") == STRUCT_SCHEMA, body


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "model,status,exc,upstream_msg",
    [
        ("claude-err-429", 429, openai.RateLimitError, ANTH_ERROR_MESSAGES[429]),
        ("claude-err-529", 529, openai.InternalServerError, ANTH_ERROR_MESSAGES[529]),
        ("llama-err-404", 404, openai.NotFoundError, ollama_error_message(404)),
        ("llama-err-500", 500, openai.InternalServerError, ollama_error_message(500)),
    ],
)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_chat_upstream_error_translated(oclient, multi_upstream, marker, model, status, exc, upstream_msg, stream):
    with pytest.raises(exc) as ei:
        res = oclient.chat.completions.create(
            model=model, messages=[{"role": "user", "content": f"err {marker}"}], stream=stream
        )
        if stream:
            list(res)
    e = ei.value
    assert multi_upstream.find_one(marker).response_status == status
    assert e.status_code == status
    body = e.response.json()
    assert isinstance(body.get("error"), dict), f"not an OpenAI error body: {body}"
    assert upstream_msg in (body["error"].get("message") or ""), body
    if model.startswith("claude-"):
        # The Anthropic provider's back-off hint and request id survive translation.
        assert e.response.headers.get("retry-after") == "7", dict(e.response.headers)
        assert e.response.headers.get("retry-after-ms") == "7000"
        assert e.response.headers.get("request-id") == "req_mock_err"
        assert e.response.headers.get("anthropic-ratelimit-requests-remaining") == "0"


@pytest.mark.parametrize(
    "model,upstream_msg",
    [
        pytest.param("claude-midfail", MIDFAIL_ANTH, id="anthropic-error-event"),
        pytest.param("llama-midfail", MIDFAIL_OLLAMA, id="ollama-error-line"),
        pytest.param("claude-middrop", None, id="anthropic-connection-drop"),
        pytest.param("llama-middrop", None, id="ollama-connection-drop"),
    ],
)
def test_chat_mid_stream_failure(oclient, marker, model, upstream_msg):
    """docs/formats.md: a `data: {"error": ...}` frame, which the SDK raises as APIError."""
    received: list[str] = []
    with pytest.raises(openai.APIError) as ei:
        for ch in oclient.chat.completions.create(
            model=model, messages=[{"role": "user", "content": f"fail {marker}"}], stream=True
        ):
            if ch.choices:
                received.append(ch.choices[0].delta.content or "")
    e = ei.value
    assert not isinstance(e, openai.APIConnectionError), f"connection error instead of an error event: {e!r}"
    assert e.message
    if upstream_msg is not None:
        assert upstream_msg in e.message, e.message
    assert "".join(received), "the text before the failure should have been relayed"
