"""Responses -> a Responses-capable OpenAI provider (`responses = true`) is byte passthrough
(docs/formats.md): `gptr-` routes to provider `upr`, which serves `POST {base_url}/responses`."""

from __future__ import annotations

import json

import openai
import pytest

from multiformat_upstream import OPENAI_KEY, RESPONSES_TEXT, RESPONSES_USAGE, openai_error_message
from xformat import RESPONSES_TEXT_SEQUENCE, assert_no_client_key, collapse

MODEL = "gptr-test-model"


def test_responses_passthrough_plain(oclient, multi_upstream, marker):
    raw = oclient.responses.with_raw_response.create(
        model=MODEL,
        input=f"say hello {marker}",
        instructions="be brief",
        store=False,
        include=["reasoning.encrypted_content"],
        extra_body={"prompt_cache_key": "session-1", "some_future_field": [1, 2]},
    )
    assert raw.status_code == 200
    assert raw.headers.get("x-router-provider") == "upr"
    assert raw.headers.get("x-router-model") == MODEL
    r = raw.parse()
    assert r.output_text == RESPONSES_TEXT
    assert (r.usage.input_tokens, r.usage.output_tokens) == RESPONSES_USAGE
    rec = multi_upstream.find_one(marker)
    assert rec.path == "/v1/responses", rec.path
    assert rec.headers.get("authorization") == f"Bearer {OPENAI_KEY}"
    assert_no_client_key(rec)
    assert rec.body_bytes == raw.http_request.content, "request body changed on a same-format route"
    assert raw.http_response.content == bytes(rec.response_bytes), "response body changed on a same-format route"


def test_responses_passthrough_stream(oclient, multi_upstream, marker):
    with oclient.responses.with_streaming_response.create(model=MODEL, input=f"stream {marker}", stream=True) as resp:
        assert resp.status_code == 200
        assert resp.headers.get("x-router-provider") == "upr"
        data = resp.read()
    rec = multi_upstream.find_one(marker)
    assert rec.path == "/v1/responses"
    assert rec.body["stream"] is True
    assert data == bytes(rec.response_bytes), "stream bytes changed on a same-format route"

    with oclient.responses.stream(model=MODEL, input=f"stream helper {marker}") as s:
        events = list(s)
        final = s.get_final_response()
    assert collapse([e.type for e in events]) == RESPONSES_TEXT_SEQUENCE
    assert final.output_text == RESPONSES_TEXT


def test_responses_passthrough_plugins_removed(oclient, multi_upstream, marker):
    raw = oclient.responses.with_raw_response.create(
        model=MODEL, input=f"plugins {marker}", extra_body={"plugins": [{"id": "response-healing"}], "keep_me": 1}
    )
    assert raw.status_code == 200
    rec = multi_upstream.find_one(marker)
    sent = json.loads(raw.http_request.content)
    del sent["plugins"]
    assert rec.body == sent and list(rec.body) == list(sent), rec.body


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_responses_passthrough_error_unmodified(oclient, multi_upstream, marker, stream):
    with pytest.raises(openai.RateLimitError) as ei:
        if stream:
            with oclient.responses.stream(model="gptr-err-429", input=f"err {marker}") as s:
                s.get_final_response()
        else:
            oclient.responses.create(model="gptr-err-429", input=f"err {marker}")
    rec = multi_upstream.find_one(marker)
    assert ei.value.status_code == 429
    assert ei.value.response.content == bytes(rec.response_bytes)
    assert ei.value.response.json()["error"]["message"] == openai_error_message(429)
