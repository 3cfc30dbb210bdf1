"""Reasoning text crosses formats, and Anthropic thinking blocks sent back in the
history are dropped for non-Anthropic upstreams.

Models containing `think` make the mock upstream reason first: OpenAI-compatible
`reasoning_content` (vLLM/DeepSeek style), an Anthropic `thinking` block with a signature, Ollama
`message.thinking`. On the client side the chat format has no official reasoning field; the common
extensions `reasoning_content` and `reasoning` are both accepted. Responses carries it as a
`reasoning` output item (summary or content text accepted).
"""

from __future__ import annotations

import pytest

from multiformat_upstream import THINK_TEXT
from xformat import ANTH, OLL, UP, Route, find_keys

THINK_MODELS = {"up": "gpt-think-model", "anth": "claude-think-model", "oll": "llama-think:latest"}


def _model(route: Route) -> str:
    return THINK_MODELS[route.provider]


# --------------------------------------------------------------------------- Anthropic client


@pytest.mark.parametrize("route", [pytest.param(UP, id="from-openai"), pytest.param(OLL, id="from-ollama")])
def test_anthropic_client_gets_thinking_block(aclient, multi_upstream, marker, route: Route):
    q = [{"role": "user", "content": f"think {marker}"}]
    msg = aclient.messages.create(model=_model(route), max_tokens=100, messages=q)
    assert [b.type for b in msg.content] == ["thinking", "text"], msg.content
    assert msg.content[0].thinking == THINK_TEXT
    assert msg.content[1].text == route.text

    with aclient.messages.stream(model=_model(route), max_tokens=100, messages=q) as s:
        events = list(s)
        final = s.get_final_message()
    thinking = "".join(
        e.delta.thinking for e in events if e.type == "content_block_delta" and e.delta.type == "thinking_delta"
    )
    assert thinking == THINK_TEXT
    assert [b.type for b in final.content] == ["thinking", "text"], final.content
    assert final.content[0].thinking == THINK_TEXT and final.content[1].text == route.text

    # The thinking block goes back in the history, as Claude Code sends it: dropped upstream.
    follow = aclient.messages.create(
        model=_model(route),
        max_tokens=100,
        messages=[
            *q,
            {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in msg.content]},
            {"role": "user", "content": f"and then? {marker}"},
        ],
    )
    assert follow.content[-1].text == route.text
    recs = multi_upstream.find(marker)
    assert len(recs) == 3
    body = recs[2].body
    # The signature and Anthropic's block shape never leave for another format. Ollama has its own
    # string field `message.thinking` for reasoning history, so that one may carry the text.
    leaked = find_keys(body, {"signature", "type"} if route is OLL else {"thinking", "signature"})
    leaked = [p for p in leaked if not (route is OLL and p.startswith("$.tools"))]
    assert not leaked, f"thinking block sent to a {route.provider} upstream at {leaked}: {body}"
    if route is OLL:
        for m in body["messages"]:
            assert isinstance(m.get("thinking", ""), str), m
    assistant = [m for m in body["messages"] if m["role"] == "assistant"]
    assert len(assistant) == 1, body["messages"]


# --------------------------------------------------------------------------- chat client


def _reasoning_of(obj) -> str | None:
    extra = getattr(obj, "model_extra", None) or {}
    for name in ("reasoning_content", "reasoning"):
        v = getattr(obj, name, None) or extra.get(name)
        if isinstance(v, str) and v:
            return v
    return None


@pytest.mark.parametrize("route", [pytest.param(ANTH, id="from-anthropic"), pytest.param(OLL, id="from-ollama")])
def test_chat_client_gets_reasoning(oclient, marker, route: Route):
    q = [{"role": "user", "content": f"think {marker}"}]
    c = oclient.chat.completions.create(model=_model(route), messages=q)
    msg = c.choices[0].message
    assert msg.content == route.text
    assert _reasoning_of(msg) == THINK_TEXT, f"no reasoning_content/reasoning in {msg}"

    chunks = list(oclient.chat.completions.create(model=_model(route), messages=q, stream=True))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    reasoning = "".join(_reasoning_of(ch.choices[0].delta) or "" for ch in chunks if ch.choices)
    assert text == route.text
    assert reasoning == THINK_TEXT


# --------------------------------------------------------------------------- Responses client


def _reasoning_item_text(item) -> str:
    parts = list(getattr(item, "summary", None) or []) + list(getattr(item, "content", None) or [])
    return "".join(getattr(p, "text", "") or "" for p in parts)


@pytest.mark.parametrize(
    "route", [pytest.param(UP, id="from-openai-chat"), pytest.param(ANTH, id="from-anthropic"), pytest.param(OLL, id="from-ollama")]
)
def test_responses_client_gets_reasoning_item(oclient, marker, route: Route):
    r = oclient.responses.create(model=_model(route), input=f"think {marker}")
    assert [o.type for o in r.output] == ["reasoning", "message"], r.output
    assert _reasoning_item_text(r.output[0]) == THINK_TEXT, r.output[0]
    assert r.output_text == route.text

    with oclient.responses.stream(model=_model(route), input=f"think {marker}") as s:
        events = list(s)
        final = s.get_final_response()
    types = [e.type for e in events]
    assert types[-1] == "response.completed", types
    deltas = "".join(
        e.delta for e in events
        if e.type in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta")
    )  # fmt: skip
    assert deltas == THINK_TEXT, types
    assert [o.type for o in final.output] == ["reasoning", "message"], final.output
    assert _reasoning_item_text(final.output[0]) == THINK_TEXT
    assert final.output_text == route.text
