"""Router-made errors on the new endpoints use each endpoint's own error shape (
README.md, docs/routing.md, docs/formats.md): Anthropic `{"type":"error","error":{"type","message"}}` on `/v1/messages…`,
OpenAI `{"error":{"message","type","code"}}` on `/v1/responses`."""

from __future__ import annotations

import anthropic
import openai
import pytest


def _assert_anthropic_error(body, etype: str | None = None) -> dict:
    assert isinstance(body, dict) and body.get("type") == "error", f"not an Anthropic error body: {body!r}"
    err = body.get("error")
    assert isinstance(err, dict) and isinstance(err.get("type"), str) and err.get("message"), body
    if etype is not None:
        assert err["type"] == etype, body
    return err


def test_messages_unrouted_model_is_400(aclient, multi_upstream, marker):
    with pytest.raises(anthropic.BadRequestError) as ei:
        aclient.messages.create(model="nomatch-model", max_tokens=10, messages=[{"role": "user", "content": marker}])
    err = _assert_anthropic_error(ei.value.body, "invalid_request_error")
    assert "no provider configured for model 'nomatch-model'" in err["message"], err
    assert not multi_upstream.find(marker)


def test_messages_malformed_body_is_400(aclient, multi_upstream, marker):
    with pytest.raises(anthropic.BadRequestError) as ei:
        aclient.messages.create(model=f"gpt-{marker}", max_tokens=10, messages="not-a-list")  # type: ignore[arg-type]
    _assert_anthropic_error(ei.value.body, "invalid_request_error")
    assert not multi_upstream.find(marker)


def test_count_tokens_unrouted_model_is_400(aclient):
    with pytest.raises(anthropic.BadRequestError) as ei:
        aclient.messages.count_tokens(model="nomatch-model", messages=[{"role": "user", "content": "x"}])
    _assert_anthropic_error(ei.value.body)


def test_unknown_messages_subpath_is_404_in_anthropic_shape(aclient):
    with pytest.raises(anthropic.NotFoundError) as ei:
        aclient.messages.batches.retrieve("msgbatch_nope")
    _assert_anthropic_error(ei.value.body, "not_found_error")


def test_responses_unrouted_model_is_400(oclient, multi_upstream, marker):
    with pytest.raises(openai.BadRequestError) as ei:
        oclient.responses.create(model="nomatch-model", input=marker)
    body = ei.value.response.json()
    assert isinstance(body.get("error"), dict), body
    assert "no provider configured for model 'nomatch-model'" in body["error"]["message"], body
    assert not multi_upstream.find(marker)


def test_responses_malformed_input_is_400(oclient, multi_upstream, marker):
    with pytest.raises(openai.BadRequestError) as ei:
        oclient.responses.create(model=f"gpt-{marker}", input=12345)  # type: ignore[arg-type]
    body = ei.value.response.json()
    assert isinstance(body.get("error"), dict) and body["error"].get("message"), body
    assert not multi_upstream.find(marker)
