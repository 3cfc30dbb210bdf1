"""Plugins through the official SDKs (docs/plugins.md): a request's `plugins` entry (sent with
`extra_body`) turns a plugin on for that request, on every client endpoint; `web`/`pdf` are a
400 each SDK raises as its BadRequestError; an unknown id is a 400 naming it."""

from __future__ import annotations

import json

import anthropic
import openai
import pytest

from multiformat_upstream import BROKEN_JSON_TEXT, HEALED_JSON

HEAL = {"plugins": [{"id": "response-healing"}]}


def test_openai_chat_reply_is_healed(oclient, multi_upstream, marker):
    c = oclient.chat.completions.create(
        model="gpt-brokenjson",
        messages=[{"role": "user", "content": f"json please {marker}"}],
        extra_body=HEAL,
    )
    assert json.loads(c.choices[0].message.content) == HEALED_JSON
    # The provider sent the broken text, and never saw the `plugins` member.
    rec = multi_upstream.find_one(marker)
    assert "plugins" not in rec.body
    assert json.loads(bytes(rec.response_bytes))["choices"][0]["message"]["content"] == BROKEN_JSON_TEXT


def test_without_the_plugin_the_reply_is_untouched(oclient, marker):
    c = oclient.chat.completions.create(
        model="gpt-brokenjson", messages=[{"role": "user", "content": f"json please {marker}"}]
    )
    assert c.choices[0].message.content == BROKEN_JSON_TEXT


def test_responses_client_reply_is_healed(oclient, marker):
    r = oclient.responses.create(model="gpt-brokenjson", input=f"json please {marker}", extra_body=HEAL)
    assert json.loads(r.output_text) == HEALED_JSON


def test_anthropic_client_reply_is_healed(aclient, marker):
    m = aclient.messages.create(
        model="gpt-brokenjson",
        max_tokens=64,
        messages=[{"role": "user", "content": f"json please {marker}"}],
        extra_body=HEAL,
    )
    assert json.loads(m.content[0].text) == HEALED_JSON


@pytest.mark.parametrize("plugin", ["web", "pdf"])
def test_web_and_pdf_are_a_400_each_sdk_raises(oclient, aclient, multi_upstream, marker, plugin):
    body = {"plugins": [{"id": plugin}]}
    with pytest.raises(openai.BadRequestError) as e:
        oclient.chat.completions.create(
            model="gpt-x", messages=[{"role": "user", "content": f"hi {marker}"}], extra_body=body
        )
    assert e.value.body["message"] == f"plugin '{plugin}' is not supported by this router"
    assert e.value.body["code"] == "plugin_not_supported"
    with pytest.raises(anthropic.BadRequestError) as e2:
        aclient.messages.create(
            model="claude-x",
            max_tokens=16,
            messages=[{"role": "user", "content": f"hi {marker}"}],
            extra_body=body,
        )
    assert e2.value.body["error"]["message"] == f"plugin '{plugin}' is not supported by this router"
    assert multi_upstream.find(marker) == [], "never reaches a provider"


def test_unknown_plugin_id_is_a_400_naming_it(oclient, marker):
    with pytest.raises(openai.BadRequestError) as e:
        oclient.chat.completions.create(
            model="gpt-x",
            messages=[{"role": "user", "content": f"hi {marker}"}],
            extra_body={"plugins": [{"id": "teleport"}]},
        )
    assert e.value.body["message"].startswith("unknown plugin 'teleport' (known: response-healing")
