"""The dashboard page (src/observe/dashboard.html) in a real headless Chromium.

Part 1 serves the page from a fake feed whose events the test pushes one by one, so every
state of the page is reached deterministically. Part 2 opens the page on the real router
(OSR_BIN, default target/debug/opensourcellmrouter), sends requests to its built-in mock
provider and watches them go from in flight to completed. Part 2 skips when the binary is
missing or answers 404 at /dashboard (a build without the dashboard).

The page is screenshotted to docs/dashboard.png by part 2, or by part 1 when part 2 skipped.
OSR_DASHBOARD_SCREENSHOT=PATH writes it elsewhere; OSR_DASHBOARD_SCREENSHOT=0 disables it.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from dashkit import (  # noqa: F401 - browser, page and fake_feed are fixtures
    DASHBOARD_HTML,
    SCREENSHOT,
    Cdp,
    FakeFeed,
    browser,
    fake_feed,
    in_thread,
    page,
    router_binary,
    start_router,
)

KEY = "dash-test-key"

# ---------------------------------------------------------------------------- helpers


def screenshot_target() -> Path | None:
    v = os.environ.get("OSR_DASHBOARD_SCREENSHOT")
    if v is None:
        return SCREENSHOT
    return None if v in ("", "0") else Path(v)


_shots: dict[str, Path] = {}


@pytest.fixture(scope="session", autouse=True)
def _screenshot_fallback(tmp_path_factory: pytest.TempPathFactory):
    """Part 1 always shoots into a temp file; it becomes docs/dashboard.png only if part 2
    (the real router) did not write one."""
    _shots["fake"] = tmp_path_factory.mktemp("shots") / "fake.png"
    yield
    target = screenshot_target()
    if target and "real" not in _shots and _shots["fake"].exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_shots["fake"], target)


def q(sel: str) -> str:
    """JS for the text of the first element matching `sel`, or null."""
    return f"(document.querySelector({json.dumps(sel)}) || {{}}).textContent ?? null"


def exists(sel: str) -> str:
    return f"!!document.querySelector({json.dumps(sel)})"


def count(sel: str) -> str:
    return f"document.querySelectorAll({json.dumps(sel)}).length"


DUMP = (
    "JSON.stringify({conn: document.querySelector('#conn').outerHTML,"
    " inflight: document.querySelector('#inflight tbody').innerText,"
    " completed: document.querySelector('#completed tbody').innerText.slice(0, 2000),"
    " providers: document.querySelector('#providers tbody').innerText,"
    " tags: document.querySelector('#tags tbody').innerText}, null, 1)"
)


def wait(page: Cdp, expr: str, what: str, timeout: float = 10.0) -> Any:
    return page.wait_for(expr, what, timeout=timeout, dump=DUMP)


def wait_text(page: Cdp, sel: str, want: str, timeout: float = 10.0) -> None:
    wait(page, f"{q(sel)} === {json.dumps(want)}", f"{sel} to read {want!r}", timeout)


def tag_list(page: Cdp, sel: str) -> list[str]:
    return page.evaluate(
        f"Array.from(document.querySelectorAll({json.dumps(sel + ' .tag')})).map(e => e.textContent)"
    )


def now_ms() -> int:
    return int(time.time() * 1000)


def log_entry(id_: str, **over: Any) -> dict[str, Any]:
    e: dict[str, Any] = {
        "type": "complete",
        "id": id_,
        "ts_ms": now_ms(),
        "provider": "mock",
        "requested_model": "mock-fast",
        "sent_model": "mock-fast",
        "duration_ms": 1234,
        "tags": [],
        "status": 200,
        "stream": False,
        "ttft_ms": 250,
        "overhead_us": 42,
        "input_tokens": 11,
        "output_tokens": 7,
        "response_tags": [],
        "attempts": ["mock"],
        "error": None,
        "plugins": [],
        "messages": [{"role": "user", "content": "hi"}],
        "some_future_field": {"x": 1},
    }
    e.update(over)
    return e


def open_fake(page: Cdp, feed: FakeFeed, query: str = "") -> None:
    page.navigate(f"{feed.root}/dashboard{query}")
    wait(page, "document.querySelector('#conn').dataset.state === 'open'", "the feed to connect")
    # The fake registers a subscriber before its first write; wait so pushes are not lost.
    deadline = time.monotonic() + 10
    while feed.subscribers() < 1:
        assert time.monotonic() < deadline, "the fake feed never saw the page subscribe"
        time.sleep(0.01)


# ---------------------------------------------------------------------------- part 1: fake feed


def test_request_lifecycle_on_fake_feed(page: Cdp, fake_feed: FakeFeed) -> None:
    open_fake(page, fake_feed, "?api_key=s3cr%C3%A9t&x=1")
    assert fake_feed.events_urls == ["/dashboard/events?api_key=s3cr%C3%A9t&x=1"], (
        "the page must read the feed with its own query string (api_key) kept"
    )

    fake_feed.push({"type": "start", "id": "r-1", "ts_ms": now_ms() - 500, "model": "mock-fast",
                    "in_flight": 1, "path": "/v1/chat/completions", "stream": True})
    row = '#inflight tbody tr[data-id="r-1"]'
    wait(page, exists(row), "r-1 in #inflight")
    assert page.evaluate(f"document.querySelector('{row}').dataset.state") == "started"
    assert page.evaluate(f"document.querySelector('{row} .model').firstChild.textContent") == "mock-fast"
    wait_text(page, "#stat-inflight", "1")

    # The elapsed time ticks with no event arriving.
    first = page.evaluate(q(f"{row} .elapsed"))
    wait(page, f"{q(row + ' .elapsed')} !== {json.dumps(first)}", "the elapsed time to tick")

    fake_feed.push({"type": "classified", "id": "r-1", "ts_ms": now_ms(), "tags": ["code", "finance"]})
    wait(page, f"document.querySelector('{row}').dataset.state === 'classified'", "r-1 classified")
    assert tag_list(page, f"{row} .tags") == ["code", "finance"]

    fake_feed.push({"type": "routed", "id": "r-1", "ts_ms": now_ms(), "provider": "mock",
                    "model": "mock-fast", "attempt": 1, "endpoint": None})
    wait(page, f"document.querySelector('{row}').dataset.state === 'routed'", "r-1 routed")
    assert page.evaluate(q(f"{row} .provider")) == "mock"
    wait(page, exists('#providers tbody tr[data-provider="mock"]'), "a live row for provider mock")
    assert page.evaluate(q('#providers tr[data-provider="mock"] .inflight')) == "1"
    assert page.evaluate(q('#providers tr[data-provider="mock"] .count')) == "0"

    # Failover: a second `routed` replaces the provider and shows the attempt.
    fake_feed.push({"type": "routed", "id": "r-1", "ts_ms": now_ms(), "provider": "backup",
                    "model": "mock-fast", "attempt": 2, "endpoint": "http://127.0.0.1:9/v1"})
    wait(page, f"document.querySelector('{row} .provider').dataset.attempt === '2'", "attempt 2 shown")
    assert page.evaluate(q(f"{row} .provider")).startswith("backup")
    assert "attempt 2" in page.evaluate(q(f"{row} .provider"))

    fake_feed.push(log_entry("r-1", provider="backup", tags=["code", "finance"], stream=True,
                             response_tags=["refusal"], attempts=["mock", "backup"],
                             input_tokens=1200, output_tokens=345, ttft_ms=250, overhead_us=42,
                             duration_ms=1234))
    done = '#completed tbody tr[data-id="r-1"]'
    wait(page, exists(done), "r-1 in #completed")
    assert not page.evaluate(exists(row)), "a completed request must leave #inflight"
    cells = page.evaluate(
        f"Object.fromEntries(Array.from(document.querySelector('{done}').children)"
        ".map(c => [c.className.split(' ')[0], c.textContent]))"
    )
    assert cells["status"] == "200"
    assert cells["tokens-in"] == "1,200" and cells["tokens-out"] == "345"
    assert cells["ttft"] == "250 ms" and cells["overhead"] == "42 µs" and cells["duration"] == "1.23 s"
    assert page.evaluate(q(f"{done} .model")) == "mock-fast"
    assert page.evaluate(q(f"{done} .provider")) == "backup"
    assert "mock → backup" in cells["route"], "the providers tried are shown on failover"
    assert tag_list(page, f"{done} .tags") == ["code", "finance"]
    assert tag_list(page, f"{done} .response-tags") == ["refusal"]
    assert page.evaluate(f"document.querySelector('{done}').classList.contains('error')") is False

    wait_text(page, "#stat-total", "1")
    assert page.evaluate(q("#stat-inflight")) == "0"
    assert page.evaluate(q("#stat-errors")) == "0"
    p = '#providers tbody tr[data-provider="backup"]'
    assert page.evaluate(q(f"{p} .count")) == "1"
    assert page.evaluate(q(f"{p} .errors")) == "0"
    assert page.evaluate(q(f"{p} .tokens-in")) == "1,200"
    assert page.evaluate(q(f"{p} .tokens-out")) == "345"
    assert page.evaluate(exists('#providers tr[data-provider="mock"]')) is False, (
        "a provider with no completions and nothing in flight has no row"
    )
    for tag in ("code", "finance"):
        assert page.evaluate(q(f'#tags tbody tr[data-tag="{tag}"] .count')) == "1"

    # A second request completes with an error; counters follow.
    fake_feed.push({"type": "start", "id": "r-2", "ts_ms": now_ms(), "model": "gpt-x", "in_flight": 1,
                    "path": "/v1/chat/completions", "stream": False},
                   {"type": "classified", "id": "r-2", "ts_ms": now_ms(), "tags": ["code"]},
                   {"type": "routed", "id": "r-2", "ts_ms": now_ms(), "provider": "local",
                    "model": "gpt-x", "attempt": 1, "endpoint": "http://127.0.0.1:8080/v1"})
    wait(page, exists('#inflight tr[data-id="r-2"][data-state="routed"]'), "r-2 routed")
    shot = _shots["fake"]
    page.screenshot(shot)  # one in flight, one completed: the fallback docs/dashboard.png
    fake_feed.push(log_entry("r-2", provider="local", requested_model="gpt-x", sent_model="gpt-x",
                             tags=["code"], status=502, input_tokens=None, output_tokens=None,
                             ttft_ms=None, overhead_us=None, attempts=["local"],
                             error="provider local: connect to http://127.0.0.1:8080/v1 refused"))
    err = '#completed tbody tr[data-id="r-2"]'
    wait(page, exists(err), "r-2 in #completed")
    assert page.evaluate(f"document.querySelector('{err}').classList.contains('error')") is True
    assert page.evaluate(f"document.querySelector('{err}').dataset.status") == "502"
    assert "refused" in page.evaluate(q(f"{err} .error-msg"))
    assert page.evaluate(q(f"{err} .tokens-in")) == "–"
    assert page.evaluate(q("#stat-errors")) == "1"
    assert page.evaluate(q('#providers tr[data-provider="local"] .errors')) == "1"
    assert page.evaluate(q('#tags tr[data-tag="code"] .count')) == "2"
    assert page.evaluate(q('#tags tr[data-tag="code"] .errors')) == "1"
    assert page.evaluate(q('#tags tr[data-tag="finance"] .count')) == "1"
    # Newest first.
    assert page.evaluate("document.querySelector('#completed tbody tr').dataset.id") == "r-2"


def test_partial_and_hostile_events_on_fake_feed(page: Cdp, fake_feed: FakeFeed) -> None:
    open_fake(page, fake_feed)
    assert fake_feed.events_urls == ["/dashboard/events"]

    # Opened mid-request: no `start`, the first event creates the row.
    fake_feed.push({"type": "routed", "id": "r-mid", "ts_ms": now_ms() - 2000, "provider": "mock",
                    "model": "mock-fast", "attempt": 1, "endpoint": None})
    row = '#inflight tbody tr[data-id="r-mid"]'
    wait(page, exists(row), "r-mid in #inflight without a start")
    assert page.evaluate(q(f"{row} .provider")) == "mock"
    assert page.evaluate(q(f"{row} .model")) == "mock-fast", "the model comes from `routed` when `start` was missed"
    first = page.evaluate(q(f"{row} .elapsed"))
    assert first.endswith(" ms") or first.endswith(" s"), first
    wait(page, f"{q(row + ' .elapsed')} !== {json.dumps(first)}", "elapsed to tick from the first event seen")

    # A complete with nothing seen before, and with every optional field null.
    fake_feed.push({"type": "complete", "id": "r-only", "ts_ms": None, "provider": None,
                    "requested_model": None, "status": None, "error": "client disconnected"})
    wait(page, exists('#completed tr[data-id="r-only"].error'), "r-only in #completed, marked as an error")
    assert page.evaluate(q('#providers tr[data-provider="(none)"] .errors')) == "1"

    # Nothing a request carries is ever parsed as HTML.
    evil = '<img src=x onerror="window.__pwned=1">'
    fake_feed.push({"type": "start", "id": "r-<b>x</b>", "ts_ms": now_ms(), "model": evil, "in_flight": 1},
                   {"type": "classified", "id": "r-<b>x</b>", "ts_ms": now_ms(), "tags": [evil]},
                   {"type": "routed", "id": "r-<b>x</b>", "ts_ms": now_ms(), "provider": evil,
                    "model": evil, "attempt": 1, "endpoint": evil})
    wait(page, f"{count('#inflight tbody tr')} === 2", "the hostile request in #inflight")
    fake_feed.push(log_entry("r-<b>x</b>", provider=evil, requested_model=evil, tags=[evil],
                             response_tags=[evil], error=evil, status=500))
    wait(page, exists('#completed tr[data-id="r-<b>x</b>"]'), "the hostile request in #completed")
    assert page.evaluate(count("main img, main b")) == 0, "request data was parsed as HTML"
    assert page.evaluate("window.__pwned === undefined")
    assert page.evaluate(q('#completed tr[data-id="r-<b>x</b>"] .model')) == evil
    assert page.evaluate(exists(f"#providers tr[data-provider={json.dumps(evil)}]"))

    # Unknown types, unknown fields, non-JSON data and events without an id are ignored, and
    # the page keeps going.
    fake_feed.push({"type": "metrics", "id": "zzz", "whatever": [1, 2]}, "not json {", "[1,2]",
                   {"type": "start", "ts_ms": now_ms()}, {"no_type": True},
                   {"type": "start", "id": "r-after", "ts_ms": now_ms(), "model": "m", "in_flight": 2,
                    "extra": {"nested": True}})
    wait(page, exists('#inflight tr[data-id="r-after"]'), "r-after after the junk")
    assert not page.evaluate(exists('[data-id="zzz"]'))

    # An event arriving after its request completed does not bring it back.
    fake_feed.push(log_entry("r-mid"), {"type": "classified", "id": "r-mid", "ts_ms": now_ms(), "tags": ["x"]},
                   log_entry("r-mid"), {"type": "start", "id": "r-mark", "ts_ms": now_ms(), "model": "m"})
    wait(page, exists('#inflight tr[data-id="r-mark"]'), "r-mark")
    assert not page.evaluate(exists('#inflight tr[data-id="r-mid"]'))
    assert page.evaluate(count('#completed tr[data-id="r-mid"]')) == 1, "a repeated complete is counted once"

    # The completed list keeps the last 200.
    fake_feed.push(*[log_entry(f"bulk-{i}") for i in range(230)])
    wait(page, exists('#completed tr[data-id="bulk-229"]'), "the bulk completions")
    assert page.evaluate(count("#completed tbody tr")) == 200
    assert page.evaluate("document.querySelector('#completed tbody tr').dataset.id") == "bulk-229"
    assert page.evaluate(q("#stat-total")) == str(3 + 230)
    assert page.evaluate(q('#providers tr[data-provider="mock"] .count')) == str(1 + 230)


def test_reconnects_on_fake_feed(page: Cdp, fake_feed: FakeFeed) -> None:
    open_fake(page, fake_feed, "?api_key=k1")
    fake_feed.push({"type": "start", "id": "r-lost", "ts_ms": now_ms(), "model": "m", "in_flight": 1})
    wait(page, exists('#inflight tr[data-id="r-lost"]'), "r-lost in #inflight")

    # The router goes away: the feed closes and further attempts get 503.
    fake_feed.down = True
    fake_feed.drop_all()
    wait(page, "document.querySelector('#conn').dataset.state === 'closed'", "the indicator to show disconnected")
    assert "disconnected" in page.evaluate(q("#conn"))

    fake_feed.down = False
    wait(page, "document.querySelector('#conn').dataset.state === 'open'", "the page to reconnect by itself",
         timeout=15)
    assert page.evaluate(q("#conn")) == "live"
    assert all(u == "/dashboard/events?api_key=k1" for u in fake_feed.events_urls), fake_feed.events_urls
    assert len(fake_feed.events_urls) >= 3  # first, a refused retry, the one that worked
    # r-lost may have finished unseen while away: it is dropped; live requests come back.
    assert not page.evaluate(exists('#inflight tr[data-id="r-lost"]'))
    deadline = time.monotonic() + 10
    while fake_feed.subscribers() < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    fake_feed.push({"type": "routed", "id": "r-lost", "ts_ms": now_ms(), "provider": "mock",
                    "model": "m", "attempt": 1, "endpoint": None})
    wait(page, exists('#inflight tr[data-id="r-lost"][data-state="routed"]'), "r-lost back with its next event")


# ---------------------------------------------------------------------------- part 2: real router

KEY_ENV = "OSR_DASHBOARD_TEST_KEY"


def router_config(dir_: Path) -> str:
    log = json.dumps(str(dir_ / "requests.jsonl"))
    return f"""\
[server]
host = "127.0.0.1"
port = 0
workers = 1
dashboard = true
api_key_env = "{KEY_ENV}"

[logging]
enabled = true
path = {log}

[classifiers.keyword]
enabled = true

[classifiers.keyword.tags]
code = ["python", "function"]
finance = ["invoice", "stock"]

[[providers]]
name = "mock"
format = "mock"
latency_ms = 1500

[[providers]]
name = "mockfast"
format = "mock"
latency_ms = 10

[[providers]]
name = "down"
format = "openai"
base_url = "http://127.0.0.1:1/v1"

[[routers]]
type = "prefix"
model_prefix = "mock-fast"
provider = "mockfast"

[[routers]]
type = "prefix"
model_prefix = "mock"
provider = "mock"

[[routers]]
type = "prefix"
model_prefix = "down-"
provider = "down"
"""


def http_get(addr: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    host, port = addr.rsplit(":", 1)
    c = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=10)
    try:
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        # The feed never ends: read the head only.
        body = b"" if path.startswith("/dashboard/events") and r.status == 200 else r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, body
    finally:
        c.close()


def chat(addr: str, model: str, text: str, stream: bool = False) -> tuple[int, bytes]:
    host, port = addr.rsplit(":", 1)
    c = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=30)
    try:
        body = json.dumps({"model": model, "stream": stream, "messages": [{"role": "user", "content": text}]})
        c.request("POST", "/v1/chat/completions", body=body,
                  headers={"content-type": "application/json", "authorization": f"Bearer {KEY}"})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def test_real_router(page: Cdp, tmp_path: Path) -> None:
    binary = router_binary()
    if not binary.exists():
        pytest.skip(f"router binary {binary} not built (cargo build --bins, or set OSR_BIN)")
    router = start_router(tmp_path, router_config(tmp_path), {KEY_ENV: KEY})
    try:
        addr = router.addr
        status, headers, body = http_get(addr, "/dashboard", {"authorization": f"Bearer {KEY}"})
        if status == 404:
            pytest.skip(f"{binary} answers 404 at /dashboard: this build has no dashboard server side yet")
        assert status == 200, f"GET /dashboard: {status} {body[:200]!r}"
        assert headers.get("content-type", "").startswith("text/html"), headers
        assert body == DASHBOARD_HTML.read_bytes(), (
            "GET /dashboard is not src/observe/dashboard.html verbatim (stale binary? cargo build --bins)"
        )
        # The key is required, and accepted as ?api_key= (how the page passes it to the feed).
        assert http_get(addr, "/dashboard")[0] == 401
        assert http_get(addr, "/dashboard/events")[0] == 401
        assert http_get(addr, f"/dashboard?api_key={KEY}")[0] == 200
        ev_status, ev_headers, _ = http_get(addr, f"/dashboard/events?api_key={KEY}")
        assert ev_status == 200 and ev_headers.get("content-type", "").startswith("text/event-stream"), ev_headers

        page.navigate(f"http://{addr}/dashboard?api_key={KEY}")
        wait(page, "document.querySelector('#conn').dataset.state === 'open'", "the page to connect to the router")

        # Three quick ones: plain, streamed, and one to a provider that is down.
        assert chat(addr, "mock-fast-1", "write a python function")[0] == 200
        assert chat(addr, "mock-fast-2", "summarize this invoice", stream=True)[0] == 200
        assert chat(addr, "down-model", "hello")[0] == 502
        wait(page, f"{count('#completed tbody tr')} === 3", "three requests in #completed")
        wait(page, f"{count('#completed tbody tr.error')} === 1", "the 502 marked as an error")
        assert page.evaluate(q('#completed tr.error .provider')) == "down"
        assert page.evaluate(q('#completed tr.error')).find("502") >= 0

        # Two slow ones (mock latency 1500 ms) in flight at once, sent from threads.
        slow = in_thread(lambda: chat(addr, "mock-slow", "explain this python function please"))
        slow_stream = in_thread(lambda: chat(addr, "mock-slow-stream", "stock report", stream=True))
        wait(page, f"{count('#inflight tbody tr[data-state=routed]')} === 2", "two slow requests routed, in flight")
        ids = page.evaluate(
            "Object.fromEntries(Array.from(document.querySelectorAll('#inflight tbody tr'))"
            ".map(r => [r.querySelector('.model').firstChild.textContent, r.dataset.id]))"
        )
        assert set(ids) == {"mock-slow", "mock-slow-stream"}, ids
        rid = ids["mock-slow"]
        row = f'#inflight tr[data-id={json.dumps(rid)}]'
        assert page.evaluate(q(f"{row} .provider")) == "mock"
        assert tag_list(page, f"{row} .tags") == ["code"]
        assert page.evaluate(q('#providers tr[data-provider="mock"] .inflight')) == "2"
        target = screenshot_target()
        if target:
            page.screenshot(target)
            _shots["real"] = target

        done = f'#completed tr[data-id={json.dumps(rid)}]'
        wait(page, exists(done), f"{rid} to move to #completed", timeout=20)
        assert not page.evaluate(exists(row))
        res = slow.get(timeout=20)
        assert not isinstance(res, BaseException), res
        assert res[0] == 200
        res = slow_stream.get(timeout=20)
        assert not isinstance(res, BaseException), res
        assert res[0] == 200
        wait(page, f"{count('#inflight tbody tr')} === 0", "nothing left in flight")

        assert page.evaluate(q(f"{done} .status")) == "200"
        assert page.evaluate(q(f"{done} .model")) == "mock-slow"
        assert page.evaluate(q(f"{done} .provider")) == "mock"
        assert tag_list(page, f"{done} .tags") == ["code"]
        for cell in ("tokens-in", "tokens-out", "duration", "ttft", "overhead"):
            assert page.evaluate(q(f"{done} .{cell}")) != "–", f"{cell} is empty for {rid}"
        assert page.evaluate(q("#stat-total")) == "5"
        assert page.evaluate(q("#stat-errors")) == "1"
        assert page.evaluate(q('#providers tr[data-provider="mock"] .count')) == "2"
        assert page.evaluate(q('#providers tr[data-provider="mockfast"] .count')) == "2"
        assert page.evaluate(q('#providers tr[data-provider="down"] .errors')) == "1"
        assert page.evaluate(q('#tags tr[data-tag="code"] .count')) == "2"
        assert page.evaluate(q('#tags tr[data-tag="finance"] .count')) == "2"
    finally:
        router.stop()
