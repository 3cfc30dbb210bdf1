"""`POST /v1/responses` with the official `openai` SDK (README.md, docs/formats.md).

Provider `up` is an OpenAI-format provider *without* `responses = true`, so `gpt-` requests are
translated to chat completions; `claude-` goes to Anthropic Messages, `llama` to Ollama, `mock` to
the built-in mock. Fixtures: conftest.py; upstream: multiformat_upstream.py.
"""

from __future__ import annotations

import openai
import pytest

from multiformat_upstream import (
    ANTH_ERROR_MESSAGES,
    ANTH_TOOL_PREFACE,
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
    OLL,
    RESP_TOOLS,
    RESPONSES_TEXT_SEQUENCE,
    TOOL_DESC,
    TOOL_NAME,
    TOOL_RESULT,
    TOOL_SCHEMA,
    UP,
    Route,
    assert_translated_request,
    collapse,
    json_loads_strict,
    sse_frames,
)

ROUTES = [pytest.param(UP, id="to-openai-chat"), pytest.param(ANTH, id="to-anthropic"), pytest.param(OLL, id="to-ollama")]


def _assert_sequence_numbers(events) -> None:
    seq = [getattr(e, "sequence_number", None) for e in events]
    assert all(isinstance(n, int) for n in seq), f"events without an integer sequence_number: {seq}"
    assert all(b > a for a, b in zip(seq, seq[1:])), f"sequence_number not increasing: {seq}"


# --------------------------------------------------------------------------- text


@pytest.mark.parametrize("route", ROUTES)
def test_responses_plain(oclient, multi_upstream, marker, route: Route):
    raw = oclient.responses.with_raw_response.create(
        model=route.model,
        input=f"say hello {marker}",
        instructions="be brief",
        max_output_tokens=64,
        temperature=0.5,
    )
    assert raw.status_code == 200
    assert raw.headers.get("x-router-provider") == route.provider
    assert raw.headers.get("x-router-model") == route.model
    r = raw.parse()
    assert r.object == "response"
    assert r.status == "completed"
    assert r.output_text == route.text
    assert [o.type for o in r.output] == ["message"], r.output
    assert r.output[0].role == "assistant"
    assert [c.type for c in r.output[0].content] == ["output_text"]
    assert r.usage is not None
    inp, out = route.usage
    assert (r.usage.input_tokens, r.usage.output_tokens, r.usage.total_tokens) == (inp, out, inp + out)
    rec = multi_upstream.find_one(marker)
    assert_translated_request(
        rec, route, system="be brief", user=f"say hello {marker}", stream=False, max_tokens=64, temperature=0.5
    )


@pytest.mark.parametrize("route", ROUTES)
def test_responses_message_list_input(oclient, multi_upstream, marker, route: Route):
    r = oclient.responses.create(
        model=route.model,
        input=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "input_text", "text": f"list input {marker}"}]},
        ],
    )
    assert r.output_text == route.text
    assert_translated_request(
        multi_upstream.find_one(marker), route, system="be brief", user=f"list input {marker}", stream=False
    )


@pytest.mark.parametrize("route", ROUTES)
def test_responses_stream(oclient, multi_upstream, marker, route: Route):
    with oclient.responses.stream(
        model=route.model, input=f"stream {marker}", instructions="be brief"
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    assert collapse(types) == RESPONSES_TEXT_SEQUENCE, f"event sequence {types}"
    _assert_sequence_numbers(events)
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == route.text
    done = next(e for e in events if e.type == "response.output_text.done")
    assert done.text == route.text
    assert final.status == "completed"
    assert final.output_text == route.text
    inp, out = route.usage
    assert final.usage is not None
    assert (final.usage.input_tokens, final.usage.output_tokens) == (inp, out)
    assert_translated_request(
        multi_upstream.find_one(marker), route, system="be brief", user=f"stream {marker}", stream=True
    )


@pytest.mark.parametrize(
    "model",
    [pytest.param(UP.model, id="to-openai-chat"), pytest.param(ANTH.model, id="to-anthropic"),
     pytest.param(OLL.model, id="to-ollama"), pytest.param("mock-1", id="to-mock")],
)  # fmt: skip
def test_responses_stream_wire_frames(oclient, marker, model):
    """docs/formats.md: `event: <type>` + data with the same `type` and a `sequence_number`;
    no `[DONE]`; the last event is `response.completed`."""
    with oclient.responses.with_streaming_response.create(model=model, input=f"frames {marker}", stream=True) as resp:
        assert resp.status_code == 200
        assert resp.headers.get("content-type", "").startswith("text/event-stream")
        raw = resp.read().decode()
    frames = sse_frames(raw)
    assert frames, raw
    seqs = []
    for event, data in frames:
        assert event is not None, f"frame without an event: line: {data!r}"
        obj = json_loads_strict(data)
        assert obj.get("type") == event, f"event {event!r} carries type {obj.get('type')!r}"
        assert isinstance(obj.get("sequence_number"), int), f"no sequence_number in {obj}"
        seqs.append(obj["sequence_number"])
    assert seqs == sorted(set(seqs)), f"sequence numbers {seqs}"
    assert "[DONE]" not in raw
    assert frames[-1][0] == "response.completed", f"last frame {frames[-1]}"


def test_responses_mock_plain_and_stream(oclient, multi_upstream, marker):
    before = len(multi_upstream.requests)
    raw = oclient.responses.with_raw_response.create(model="mock-1", input=f"mock {marker}")
    assert raw.headers.get("x-router-provider") == "mock"
    r = raw.parse()
    assert r.status == "completed"
    assert r.output_text
    assert r.usage is not None and r.usage.output_tokens > 0
    with oclient.responses.stream(model="mock-1", input=f"mock {marker}") as s:
        events = list(s)
        final = s.get_final_response()
    assert collapse([e.type for e in events]) == RESPONSES_TEXT_SEQUENCE
    _assert_sequence_numbers(events)
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == r.output_text
    assert final.output_text == r.output_text
    assert len(multi_upstream.requests) == before and not multi_upstream.find(marker)


# --------------------------------------------------------------------------- function calls


def _question(marker: str) -> list[dict]:
    return [{"role": "user", "content": f"weather in Paris? {marker}"}]


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
        assert t["function"].get("description") == TOOL_DESC, t


@pytest.mark.parametrize("route", ROUTES)
def test_responses_function_call_round_trip(oclient, multi_upstream, marker, route: Route):
    r1 = oclient.responses.create(model=route.model, input=_question(marker), tools=RESP_TOOLS)
    assert r1.status == "completed"
    want_types = ["message", "function_call"] if route is ANTH else ["function_call"]
    assert [o.type for o in r1.output] == want_types, r1.output
    if route is ANTH:
        assert r1.output_text == ANTH_TOOL_PREFACE
    call = r1.output[-1]
    assert call.name == TOOL_NAME
    assert json_loads_strict(call.arguments) == TOOL_ARGS
    assert isinstance(call.call_id, str) and call.call_id
    _assert_tool_defs(multi_upstream.find_one(marker).body, route)

    r2 = oclient.responses.create(
        model=route.model,
        input=[*_question(marker), *r1.output, {"type": "function_call_output", "call_id": call.call_id, "output": TOOL_RESULT}],
        tools=RESP_TOOLS,
    )
    assert r2.status == "completed"
    assert r2.output_text == f"tool said: {TOOL_RESULT}"

    recs = multi_upstream.find(marker)
    assert len(recs) == 2
    msgs = recs[1].body["messages"]
    if route is UP:
        assert [m["role"] for m in msgs] == ["user", "assistant", "tool"], msgs
        calls = msgs[1]["tool_calls"]
        assert len(calls) == 1 and calls[0]["function"]["name"] == TOOL_NAME
        assert json_loads_strict(calls[0]["function"]["arguments"]) == TOOL_ARGS
        assert msgs[2]["tool_call_id"] == calls[0]["id"] == call.call_id
        assert text_of(msgs[2]["content"]) == TOOL_RESULT
    elif route is ANTH:
        assert msgs[0]["role"] == "user" and msgs[-1]["role"] == "user", msgs
        assert all(m["role"] == "assistant" for m in msgs[1:-1]), msgs
        assistant_blocks = [b for m in msgs[1:-1] for b in (m["content"] if isinstance(m["content"], list) else [])]
        uses = [b for b in assistant_blocks if b.get("type") == "tool_use"]
        assert len(uses) == 1 and uses[0]["name"] == TOOL_NAME and uses[0]["input"] == TOOL_ARGS, msgs
        results = [b for b in msgs[-1]["content"] if b.get("type") == "tool_result"]
        assert len(results) == 1 and results[0]["tool_use_id"] == uses[0]["id"] == call.call_id, msgs
        assert text_of(results[0].get("content")) == TOOL_RESULT
    else:
        assert [m["role"] for m in msgs] == ["user", "assistant", "tool"], msgs
        calls = msgs[1]["tool_calls"]
        assert len(calls) == 1 and calls[0]["function"]["name"] == TOOL_NAME
        assert calls[0]["function"]["arguments"] == TOOL_ARGS
        assert msgs[2]["content"] == TOOL_RESULT


@pytest.mark.parametrize("route", ROUTES)
def test_responses_function_call_stream(oclient, multi_upstream, marker, route: Route):
    with oclient.responses.stream(model=route.model, input=_question(marker), tools=RESP_TOOLS) as s:
        events = list(s)
        final = s.get_final_response()
    types = [e.type for e in events]
    _assert_sequence_numbers(events)
    assert types[0] == "response.created" and types[-1] == "response.completed", types
    added = [
        i for i, e in enumerate(events)
        if e.type == "response.output_item.added" and e.item.type == "function_call"
    ]  # fmt: skip
    assert len(added) == 1, types
    item = events[added[0]].item
    assert item.name == TOOL_NAME and item.call_id
    deltas = [(i, e) for i, e in enumerate(events) if e.type == "response.function_call_arguments.delta"]
    assert deltas, types
    assert all(e.output_index == events[added[0]].output_index for _, e in deltas)
    assert json_loads_strict("".join(e.delta for _, e in deltas)) == TOOL_ARGS
    if route is not OLL:  # streamed in pieces upstream: relayed as they come
        assert len(deltas) >= 2, f"arguments arrived in {len(deltas)} delta(s)"
    done = [(i, e) for i, e in enumerate(events) if e.type == "response.function_call_arguments.done"]
    assert len(done) == 1 and json_loads_strict(done[0][1].arguments) == TOOL_ARGS
    item_done = [
        i for i, e in enumerate(events)
        if e.type == "response.output_item.done" and e.item.type == "function_call"
    ]  # fmt: skip
    assert len(item_done) == 1
    assert added[0] < deltas[0][0] and deltas[-1][0] < done[0][0] < item_done[0] < len(events) - 1, types
    assert final.status == "completed"
    calls = [o for o in final.output if o.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == TOOL_NAME and json_loads_strict(calls[0].arguments) == TOOL_ARGS
    rec = multi_upstream.find_one(marker)
    assert rec.body.get("stream") is True
    _assert_tool_defs(rec.body, route)


# --------------------------------------------------------------------------- structured output


@pytest.mark.parametrize("route", ROUTES)
def test_responses_structured_output(oclient, multi_upstream, marker, route: Route):
    r = oclient.responses.create(
        model=route.model,
        input=f"answer as JSON {marker}",
        text={"format": {"type": "json_schema", "name": "answer", "schema": STRUCT_SCHEMA, "strict": True}},
    )
    assert json_loads_strict(r.output_text) == STRUCT_ANSWER
    body = multi_upstream.find_one(marker).body
    if route is UP:
        rf = body.get("response_format")
        assert isinstance(rf, dict) and rf.get("type") == "json_schema", body
        assert rf["json_schema"]["schema"] == STRUCT_SCHEMA and rf["json_schema"]["name"] == "answer", rf
    elif route is ANTH:
        fmt = (body.get("output_config") or {}).get("format")
        assert isinstance(fmt, dict) and fmt.get("type") == "json_schema", body
        assert fmt.get("schema") == STRUCT_SCHEMA, fmt
    else:
        assert body.get("format") == STRUCT_SCHEMA, body


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("model", [UP.model, ANTH.model, OLL.model], ids=["openai", "anthropic", "ollama"])
def test_previous_response_id_is_400(oclient, multi_upstream, marker, model):
    with pytest.raises(openai.BadRequestError) as ei:
        oclient.responses.create(model=model, input=f"continue {marker}", previous_response_id="resp_abc123")
    e = ei.value
    assert e.status_code == 400
    body = e.response.json()
    assert isinstance(body.get("error"), dict), body
    assert "previous_response_id" in body["error"].get("message", ""), body
    assert not multi_upstream.find(marker), "a rejected request must not reach the provider"


@pytest.mark.parametrize(
    "model,status,exc,upstream_msg",
    [
        ("claude-err-429", 429, openai.RateLimitError, ANTH_ERROR_MESSAGES[429]),
        ("gpt-err-429", 429, openai.RateLimitError, openai_error_message(429)),
        ("llama-err-404", 404, openai.NotFoundError, ollama_error_message(404)),
    ],
)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_responses_upstream_error_translated(oclient, multi_upstream, marker, model, status, exc, upstream_msg, stream):
    with pytest.raises(exc) as ei:
        if stream:
            with oclient.responses.stream(model=model, input=f"err {marker}") as s:
                s.get_final_response()
        else:
            oclient.responses.create(model=model, input=f"err {marker}")
    e = ei.value
    assert multi_upstream.find_one(marker).response_status == status
    assert e.status_code == status
    body = e.response.json()
    assert isinstance(body.get("error"), dict), f"not an OpenAI error body: {body}"
    assert upstream_msg in (body["error"].get("message") or ""), body


@pytest.mark.parametrize(
    "model,upstream_msg",
    [
        pytest.param("claude-midfail", MIDFAIL_ANTH, id="anthropic-error-event"),
        pytest.param("gpt-midfail", MIDFAIL_OPENAI, id="openai-error-payload"),
        pytest.param("llama-midfail", MIDFAIL_OLLAMA, id="ollama-error-line"),
        pytest.param("claude-middrop", None, id="anthropic-connection-drop"),
        pytest.param("gpt-middrop", None, id="openai-connection-drop"),
        pytest.param("llama-middrop", None, id="ollama-connection-drop"),
    ],
)
def test_responses_mid_stream_failure(oclient, multi_upstream, marker, model, upstream_msg):
    """The stream ends with the Responses API's own failure event (`response.failed` or `error`),
    never with `response.completed`."""
    with oclient.responses.stream(model=model, input=f"fail {marker}") as s:
        events = list(s)
        with pytest.raises(RuntimeError, match="response.completed"):
            s.get_final_response()
    types = [e.type for e in events]
    assert "response.completed" not in types, types
    assert types and types[-1] in ("response.failed", "error"), f"stream did not end with a failure event: {types}"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta"), "text before the failure lost"
    last = events[-1]
    message = last.message if last.type == "error" else (last.response.error.message if last.response.error else "")
    assert message, f"failure event without a message: {last}"
    if upstream_msg is not None:
        assert upstream_msg in message, message
