"""Images cross formats (docs/formats.md), sent with the official SDKs: Anthropic image
blocks, OpenAI chat `image_url` parts and Responses `input_image` items each reach an OpenAI,
Anthropic or Ollama upstream in that provider's own shape. Fixtures: conftest.py."""

from __future__ import annotations

import pytest

from xformat import ANTH, OLL, UP, Route

PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
DATA_URL = f"data:image/png;base64,{PNG_B64}"
HTTPS_URL = "https://images.example.com/cat.png"


def _user_message(body: dict) -> dict:
    msgs = [m for m in body["messages"] if m.get("role") == "user"]
    assert len(msgs) == 1, body["messages"]
    return msgs[0]


def _assert_image_upstream(body: dict, route: Route, marker: str, *, url: str = DATA_URL) -> None:
    msg = _user_message(body)
    if route is UP:
        parts = msg["content"]
        assert isinstance(parts, list), msg
        images = [p for p in parts if p.get("type") == "image_url"]
        assert len(images) == 1, parts
        assert images[0]["image_url"]["url"] == url, images[0]
        assert any(p.get("type") == "text" and marker in p.get("text", "") for p in parts), parts
    elif route is ANTH:
        blocks = msg["content"]
        assert isinstance(blocks, list), msg
        images = [b for b in blocks if b.get("type") == "image"]
        assert len(images) == 1, blocks
        if url == DATA_URL:
            assert images[0]["source"] == {"type": "base64", "media_type": "image/png", "data": PNG_B64}, images[0]
        else:
            assert images[0]["source"] == {"type": "url", "url": url}, images[0]
        assert any(b.get("type") == "text" and marker in b.get("text", "") for b in blocks), blocks
    else:
        assert msg.get("images") == [PNG_B64], f"ollama wants raw base64 in `images`: {msg}"
        assert marker in msg["content"], msg


@pytest.mark.parametrize("route", [pytest.param(UP, id="to-openai"), pytest.param(OLL, id="to-ollama")])
def test_anthropic_image_block(aclient, multi_upstream, marker, route: Route):
    msg = aclient.messages.create(
        model=route.model,
        max_tokens=50,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}},
                    {"type": "text", "text": f"describe {marker}"},
                ],
            }
        ],
    )
    assert msg.content[0].text == route.text
    _assert_image_upstream(multi_upstream.find_one(marker).body, route, marker)


def test_anthropic_image_url_block_to_openai(aclient, multi_upstream, marker):
    aclient.messages.create(
        model=UP.model,
        max_tokens=50,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": {"type": "url", "url": HTTPS_URL}},
                    {"type": "text", "text": f"describe {marker}"},
                ],
            }
        ],
    )
    _assert_image_upstream(multi_upstream.find_one(marker).body, UP, marker, url=HTTPS_URL)


@pytest.mark.parametrize("route", [pytest.param(ANTH, id="to-anthropic"), pytest.param(OLL, id="to-ollama")])
def test_chat_image_url_part(oclient, multi_upstream, marker, route: Route):
    c = oclient.chat.completions.create(
        model=route.model,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": f"describe {marker}"},
                    {"type": "image_url", "image_url": {"url": DATA_URL}},
                ],
            }
        ],
    )
    assert c.choices[0].message.content == route.text
    _assert_image_upstream(multi_upstream.find_one(marker).body, route, marker)


def test_chat_https_image_to_anthropic(oclient, multi_upstream, marker):
    oclient.chat.completions.create(
        model=ANTH.model,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": f"describe {marker}"},
                    {"type": "image_url", "image_url": {"url": HTTPS_URL}},
                ],
            }
        ],
    )
    _assert_image_upstream(multi_upstream.find_one(marker).body, ANTH, marker, url=HTTPS_URL)


@pytest.mark.parametrize(
    "route", [pytest.param(UP, id="to-openai-chat"), pytest.param(ANTH, id="to-anthropic"), pytest.param(OLL, id="to-ollama")]
)
def test_responses_input_image(oclient, multi_upstream, marker, route: Route):
    r = oclient.responses.create(
        model=route.model,
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": f"describe {marker}"},
                    {"type": "input_image", "image_url": DATA_URL, "detail": "auto"},
                ],
            }
        ],
    )
    assert r.output_text == route.text
    _assert_image_upstream(multi_upstream.find_one(marker).body, route, marker)
