"""Mid-conversation system messages through the router (docs/formats.md, "Mid-conversation system
messages").

Claude Code and other agents put `{"role": "system"}` entries in the middle of an Anthropic
`messages` array; OpenAI clients send `system` / `developer` messages anywhere. A translated route
carries such a turn where it stands (an OpenAI or Ollama `system` message) or, toward an Anthropic
provider, appends its text to the top-level `system`; an Anthropic client's request to an Anthropic
provider is byte passthrough. Fixtures: conftest.py (`aclient`, `oclient`, `multi_upstream`);
routes: xformat.py.
"""

from __future__ import annotations

import pytest

from multiformat_upstream import text_of
from xformat import ANTH, OLL, UP, Route, assert_no_client_key, roles

CROSS = [pytest.param(UP, id="to-openai"), pytest.param(OLL, id="to-ollama")]

# Claude Code's top-level system prompt: text blocks, the last one cached.
CC_SYSTEM = [
    {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude."},
    {"type": "text", "text": "Use the tools available to you.", "cache_control": {"type": "ephemeral"}},
]
CC_SYSTEM_TEXT = "You are Claude Code, Anthropic's official CLI for Claude.\n\nUse the tools available to you."


def claude_code_messages(shape: str, marker: str) -> tuple[list[dict], list[tuple[str, str]]]:
    """Messages with a system turn placed as Anthropic allows it (after a user turn, followed by an
    assistant turn or last), and the (role, text) sequence an OpenAI or Ollama upstream must get
    after its leading system message."""
    mid = f"Plan mode is on: do not edit files. {marker}"
    first, reply, second = "what is in src/?", "main.rs and lib.rs.", f"open main.rs {marker}"
    if shape == "last":
        # The system turn closes the request, right after the user's turn; its content is text
        # blocks with a cache breakpoint, as an agent appends a reminder to a cached prefix.
        msgs = [
            {"role": "user", "content": [{"type": "text", "text": first}]},
            {"role": "assistant", "content": [{"type": "text", "text": reply}]},
            {"role": "user", "content": [{"type": "text", "text": second}]},
            {"role": "system", "content": [{"type": "text", "text": mid, "cache_control": {"type": "ephemeral"}}]},
        ]
        want = [("user", first), ("assistant", reply), ("user", second), ("system", mid)]
    else:
        # Between a user turn and the assistant's answer to it, as a string.
        msgs = [
            {"role": "user", "content": first},
            {"role": "system", "content": mid},
            {"role": "assistant", "content": reply},
            {"role": "user", "content": second},
        ]
        want = [("user", first), ("system", mid), ("assistant", reply), ("user", second)]
    return msgs, want


def upstream_turns(rec) -> list[tuple[str, str]]:
    return [(m["role"], text_of(m.get("content"))) for m in rec.body["messages"]]


def assert_in_place(rec, route: Route, system: str, want: list[tuple[str, str]]) -> None:
    """The upstream (OpenAI chat or Ollama) got the system prompt first, then the conversation
    with the system turn where the client put it."""
    assert rec.path.split("?", 1)[0] == route.path, rec.path
    assert_no_client_key(rec)
    assert upstream_turns(rec) == [("system", system), *want], rec.body["messages"]
    if route is OLL:
        assert all(isinstance(m["content"], str) for m in rec.body["messages"]), rec.body


# --------------------------------------------------------------------------- Anthropic client


@pytest.mark.parametrize("shape", ["last", "before-assistant"])
@pytest.mark.parametrize("route", CROSS)
def test_claude_code_system_turn_crosses_in_place(aclient, multi_upstream, marker, route: Route, shape: str):
    msgs, want = claude_code_messages(shape, marker)
    raw = aclient.messages.with_raw_response.create(
        model=route.model, max_tokens=256, system=CC_SYSTEM, messages=msgs
    )
    assert raw.status_code == 200
    assert raw.headers.get("x-router-provider") == route.provider
    msg = raw.parse()
    assert [b.type for b in msg.content] == ["text"]
    assert msg.content[0].text == route.text
    assert_in_place(multi_upstream.find_one(marker), route, CC_SYSTEM_TEXT, want)


@pytest.mark.parametrize("route", CROSS)
def test_claude_code_system_turn_crosses_in_place_streaming(aclient, multi_upstream, marker, route: Route):
    msgs, want = claude_code_messages("last", marker)
    with aclient.messages.stream(model=route.model, max_tokens=256, system=CC_SYSTEM, messages=msgs) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == route.text
    assert final.stop_reason == "end_turn"
    rec = multi_upstream.find_one(marker)
    assert_in_place(rec, route, CC_SYSTEM_TEXT, want)
    assert rec.body.get("stream") is True


def test_claude_code_system_turn_passes_through_to_anthropic(aclient, multi_upstream, marker):
    msgs, _ = claude_code_messages("last", marker)
    raw = aclient.messages.with_raw_response.create(model=ANTH.model, max_tokens=256, system=CC_SYSTEM, messages=msgs)
    sent, got, status, headers = raw.http_request.content, raw.http_response.content, raw.status_code, raw.headers
    assert status == 200
    assert headers.get("x-router-provider") == ANTH.provider
    rec = multi_upstream.find_one(marker)
    assert rec.path == "/v1/messages", rec.path
    assert rec.body_bytes == sent
    assert roles(rec.body["messages"]) == ["user", "assistant", "user", "system"]
    assert status == rec.response_status
    assert got == bytes(rec.response_bytes)


# --------------------------------------------------------------------------- OpenAI clients


def chat_messages(marker: str) -> list[dict]:
    return [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "developer", "content": f"Answer in French. {marker}"},
        {"role": "user", "content": f"how are you {marker}"},
    ]


def test_chat_system_turn_crosses_in_place_to_ollama(oclient, multi_upstream, marker):
    c = oclient.chat.completions.create(model=OLL.model, messages=chat_messages(marker))
    assert c.choices[0].message.content == OLL.text
    assert_in_place(
        multi_upstream.find_one(marker),
        OLL,
        "be brief",
        [("user", "hi"), ("assistant", "Hello."), ("system", f"Answer in French. {marker}"),
         ("user", f"how are you {marker}")],
    )  # fmt: skip


def test_chat_system_turn_joins_the_system_prompt_to_anthropic(oclient, multi_upstream, marker):
    c = oclient.chat.completions.create(model=ANTH.model, messages=chat_messages(marker))
    assert c.choices[0].message.content == ANTH.text
    rec = multi_upstream.find_one(marker)
    assert rec.path == ANTH.path
    assert rec.body["system"] == f"be brief\n\nAnswer in French. {marker}"
    assert upstream_turns(rec) == [("user", "hi"), ("assistant", "Hello."), ("user", f"how are you {marker}")]


@pytest.mark.parametrize("route", CROSS)
def test_responses_developer_turn_crosses_in_place(oclient, multi_upstream, marker, route: Route):
    r = oclient.responses.create(
        model=route.model,
        instructions="You are Codex.",
        input=[
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "sandbox: read-only"}]},
            {"role": "user", "content": "list the files"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "a.rs"}]},
            {"role": "developer", "content": f"Approval policy is now never. {marker}"},
            {"role": "user", "content": f"thanks {marker}"},
        ],
    )
    assert r.output_text == route.text
    assert_in_place(
        multi_upstream.find_one(marker),
        route,
        "You are Codex.\n\nsandbox: read-only",
        [("user", "list the files"), ("assistant", "a.rs"), ("system", f"Approval policy is now never. {marker}"),
         ("user", f"thanks {marker}")],
    )  # fmt: skip
