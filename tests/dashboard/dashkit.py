"""Fixtures and helpers for the dashboard page tests: a headless Chromium driven over the Chrome
DevTools Protocol, a fake dashboard feed, and the real router.

Not a conftest.py on purpose: tests/sdk has one, and two modules named `conftest` collide when
both directories run in one pytest process. test_dashboard.py imports the fixtures from here.

Everything is hermetic: every server binds 127.0.0.1:0, Chromium runs with a throwaway profile
and no background networking, and nothing leaves loopback.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import re
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DASHBOARD_HTML = REPO_ROOT / "src" / "observe" / "dashboard.html"
SCREENSHOT = REPO_ROOT / "docs" / "dashboard.png"
STARTUP_TIMEOUT_S = 30.0

# Loopback traffic must never be sent through a proxy configured in the environment.
_no_proxy = ",".join(p for p in (os.environ.get("NO_PROXY", ""), "127.0.0.1", "localhost") if p)
os.environ["NO_PROXY"] = _no_proxy
os.environ["no_proxy"] = _no_proxy


# --------------------------------------------------------------------------- Chromium + CDP


def _find_chromium() -> str | None:
    env = os.environ.get("CHROME_BIN")
    if env:
        return shutil.which(env)
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _install_chromium() -> str:
    """Try `apt-get install chromium` (Debian; needs root). Returns a reason when it fails."""
    if os.environ.get("OSR_DASHBOARD_NO_INSTALL"):
        return "OSR_DASHBOARD_NO_INSTALL is set"
    if not shutil.which("apt-get"):
        return "no apt-get on this system"
    if os.geteuid() != 0:
        return "not root, cannot apt-get install chromium"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-q", "chromium"]
    try:
        if subprocess.run(cmd, env=env, capture_output=True, timeout=600).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=300)
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                return f"apt-get install chromium failed: {done.stderr.strip()[-300:]}"
    except subprocess.TimeoutExpired:
        return "apt-get install chromium timed out"
    return ""


class Cdp:
    """A minimal Chrome DevTools Protocol client: one browser websocket, one page session
    (flat protocol), a reader thread that routes replies by id and keeps the events."""

    def __init__(self, ws_url: str) -> None:
        import websocket  # websocket-client

        self._ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self._next_id = 0
        self._id_lock = threading.Lock()
        self._replies: dict[int, "queue.Queue[dict[str, Any]]"] = {}
        self.events: list[dict[str, Any]] = []
        self._closed = False
        self._reader = threading.Thread(target=self._read_loop, name="cdp-reader", daemon=True)
        self._reader.start()
        self.session: str | None = None

    def _read_loop(self) -> None:
        while not self._closed:
            try:
                raw = self._ws.recv()
            except Exception:  # closed or broken: wake every waiter
                for q in list(self._replies.values()):
                    q.put({"error": {"message": "devtools connection closed"}})
                return
            if not raw:
                continue
            msg = json.loads(raw)
            if "id" in msg:
                q = self._replies.get(msg["id"])
                if q is not None:
                    q.put(msg)
            else:
                self.events.append(msg)

    def send(self, method: str, params: dict[str, Any] | None = None, *, browser: bool = False,
             timeout: float = 30.0) -> dict[str, Any]:
        with self._id_lock:
            self._next_id += 1
            mid = self._next_id
            q: "queue.Queue[dict[str, Any]]" = queue.Queue()
            self._replies[mid] = q
        msg: dict[str, Any] = {"id": mid, "method": method, "params": params or {}}
        if not browser and self.session:
            msg["sessionId"] = self.session
        self._ws.send(json.dumps(msg))
        try:
            reply = q.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no DevTools reply to {method} within {timeout}s") from None
        finally:
            self._replies.pop(mid, None)
        if "error" in reply:
            raise AssertionError(f"DevTools {method} failed: {reply['error']}")
        return reply.get("result", {})

    def open_page(self, width: int = 1440, height: int = 900) -> None:
        target = self.send("Target.createTarget", {"url": "about:blank"}, browser=True)["targetId"]
        self.session = self.send(
            "Target.attachToTarget", {"targetId": target, "flatten": True}, browser=True
        )["sessionId"]
        self.send("Page.enable")
        self.send("Runtime.enable")
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})

    def evaluate(self, expr: str) -> Any:
        res = self.send("Runtime.evaluate", {"expression": expr, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in res:
            raise AssertionError(f"page threw evaluating {expr!r}: {res['exceptionDetails']}")
        return res.get("result", {}).get("value")

    def wait_for(self, expr: str, what: str, timeout: float = 10.0, dump: str = "") -> Any:
        """Poll `expr` in the page until it is truthy; fail after `timeout` naming `what`."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expr)
            if value:
                return value
            if time.monotonic() > deadline:
                extra = self.evaluate(dump) if dump else ""
                raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{extra}")
            time.sleep(0.03)  # poll interval, not synchronization: the loop waits on the DOM

    def navigate(self, url: str) -> None:
        self.send("Page.navigate", {"url": url})
        self.wait_for(
            f"location.href === {json.dumps(url)} && document.readyState === 'complete'",
            f"{url} to load",
        )

    def screenshot(self, path: Path) -> None:
        """A PNG of the page, cut below its content (at least 480 px high)."""
        size = self.evaluate(
            "({w: document.documentElement.clientWidth,"
            " h: Math.ceil(document.querySelector('main').getBoundingClientRect().bottom)})"
        )
        clip = {"x": 0, "y": 0, "width": size["w"], "height": max(480, size["h"]), "scale": 1}
        data = self.send("Page.captureScreenshot", {"format": "png", "clip": clip})["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))

    def page_errors(self) -> list[str]:
        """Uncaught exceptions and console.error calls seen so far."""
        out = []
        for ev in list(self.events):
            if ev.get("method") == "Runtime.exceptionThrown":
                out.append(json.dumps(ev["params"]["exceptionDetails"])[:500])
            elif ev.get("method") == "Runtime.consoleAPICalled" and ev["params"].get("type") == "error":
                out.append(json.dumps(ev["params"]["args"])[:500])
        return out

    def close(self) -> None:
        self._closed = True
        try:
            self._ws.close()
        except Exception:
            pass


@dataclass
class Browser:
    proc: subprocess.Popen
    ws_url: str
    stderr_lines: list[str]


_DEVTOOLS_RE = re.compile(r"DevTools listening on (ws://\S+)")


@pytest.fixture(scope="session")
def browser() -> Browser:
    try:
        import websocket  # noqa: F401
    except ImportError:
        pytest.fail("websocket-client is missing: pip install -r tests/dashboard/requirements.txt")
    binary = _find_chromium()
    if binary is None:
        reason = _install_chromium()
        binary = _find_chromium()
        if binary is None:
            pytest.skip(f"Chromium not available and could not be installed: {reason or 'not found after install'}")
    profile = tempfile.mkdtemp(prefix="osr-dash-chrome-")
    proc = subprocess.Popen(
        [
            binary,
            "--headless=new",
            "--no-sandbox",
            "--remote-debugging-port=0",
            "--remote-debugging-address=127.0.0.1",
            f"--user-data-dir={profile}",
            "--no-first-run",
            "--no-default-browser-check",
            "--no-proxy-server",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--disable-background-timer-throttling",
            "--disable-renderer-backgrounding",
            "--disable-backgrounding-occluded-windows",
            "--metrics-recording-only",
            "--hide-scrollbars",
            "--mute-audio",
            "about:blank",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
    )
    lines: list[str] = []
    found: "queue.Queue[str | None]" = queue.Queue()

    def drain() -> None:  # keep reading so the pipe never fills
        announced = False
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if not announced:
                m = _DEVTOOLS_RE.search(line)
                if m:
                    announced = True
                    found.put(m.group(1))
        if not announced:
            found.put(None)

    threading.Thread(target=drain, name="chromium-stderr", daemon=True).start()

    def stop() -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        shutil.rmtree(profile, ignore_errors=True)

    try:
        ws_url = found.get(timeout=STARTUP_TIMEOUT_S)
    except queue.Empty:
        stop()
        pytest.fail(f"Chromium printed no 'DevTools listening on' within {STARTUP_TIMEOUT_S}s:\n{''.join(lines[-30:])}")
    if ws_url is None:
        stop()
        pytest.fail(f"Chromium exited (code {proc.returncode}) before listening:\n{''.join(lines[-30:])}")
    try:
        yield Browser(proc=proc, ws_url=ws_url, stderr_lines=lines)
    finally:
        stop()


@pytest.fixture
def page(browser: Browser) -> Cdp:
    """A fresh tab; fails the test if the page threw or logged an error."""
    cdp = Cdp(browser.ws_url)
    try:
        cdp.open_page()
        yield cdp
        errors = cdp.page_errors()
        assert not errors, f"the page reported errors: {errors}"
    finally:
        try:
            if cdp.session:
                cdp.send("Page.close", timeout=5)
        except AssertionError:
            pass
        cdp.close()


# --------------------------------------------------------------------------- fake feed


@dataclass
class FakeFeed:
    """Serves the dashboard page and an SSE feed whose events the test pushes."""

    port: int = 0
    events_urls: list[str] = field(default_factory=list)  # path + query of each feed request
    down: bool = False  # answer the feed with 503 (a router that is away)
    _subs: list["queue.Queue[bytes | None]"] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: bool = False

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def subscribers(self) -> int:
        with self._lock:
            return len(self._subs)

    def push(self, *events: dict[str, Any] | str) -> None:
        """Send events (dicts as JSON, str as a raw `data:` payload) to every open feed."""
        payload = b"".join(
            b"data: " + (ev if isinstance(ev, str) else json.dumps(ev)).encode() + b"\n\n" for ev in events
        )
        with self._lock:
            for q in self._subs:
                q.put(payload)

    def drop_all(self) -> None:
        """Close every open feed connection."""
        with self._lock:
            for q in self._subs:
                q.put(None)


def _fake_handler(feed: FakeFeed) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # the feed ends when the connection closes

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence
            pass

        def do_GET(self) -> None:  # noqa: N802
            path = self.path.split("?", 1)[0]
            if path == "/dashboard":
                body = DASHBOARD_HTML.read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            elif path == "/dashboard/events":
                feed.events_urls.append(self.path)
                if feed.down:
                    self.send_error(503)
                    return
                self._stream()
            else:
                self.send_error(404)

        def _stream(self) -> None:
            q: "queue.Queue[bytes | None]" = queue.Queue()
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            # A short retry so the browser's own reconnect is quick, and a comment first.
            self.wfile.write(b"retry: 200\n: hello\n\n")
            self.wfile.flush()
            with feed._lock:
                feed._subs.append(q)
            try:
                while not feed.stopping:
                    try:
                        item = q.get(timeout=0.5)
                    except queue.Empty:
                        item = b": keep-alive\n\n"
                    if item is None:
                        return
                    self.wfile.write(item)
                    self.wfile.flush()
            except OSError:
                return
            finally:
                with feed._lock:
                    feed._subs.remove(q)

    return Handler


@pytest.fixture
def fake_feed() -> FakeFeed:
    feed = FakeFeed()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _fake_handler(feed))
    server.daemon_threads = True
    feed.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, name="fake-feed", daemon=True)
    thread.start()
    try:
        yield feed
    finally:
        feed.stopping = True
        feed.drop_all()
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------- real router


def router_binary() -> Path:
    return Path(os.environ.get("OSR_BIN") or REPO_ROOT / "target" / "debug" / "opensourcellmrouter")


@dataclass
class RouterProc:
    proc: subprocess.Popen
    addr: str
    stderr_lines: list[str]

    @property
    def root(self) -> str:
        return f"http://{self.addr}"

    def stderr_tail(self, n: int = 40) -> str:
        return "".join(self.stderr_lines[-n:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


_LISTEN_RE = re.compile(r"listening on http://(\[[^\]]+\]:\d+|[^\s/:]+:\d+)")


def start_router(dir_: Path, config_text: str, env_extra: dict[str, str]) -> RouterProc:
    binary = router_binary()
    cfg = dir_ / "config.toml"
    cfg.write_text(config_text)
    proc = subprocess.Popen(
        [str(binary), str(cfg)],
        cwd=dir_,  # no stray config.toml / .env from the repo
        env=dict(os.environ, **env_extra),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
    )
    lines: list[str] = []
    found: "queue.Queue[str | None]" = queue.Queue()

    def drain() -> None:
        announced = False
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if not announced:
                m = _LISTEN_RE.search(line)
                if m:
                    announced = True
                    found.put(m.group(1))
        if not announced:
            found.put(None)

    threading.Thread(target=drain, name="router-stderr", daemon=True).start()
    router = RouterProc(proc=proc, addr="", stderr_lines=lines)
    try:
        addr = found.get(timeout=STARTUP_TIMEOUT_S)
    except queue.Empty:
        router.stop()
        pytest.fail(f"router did not print 'listening on' within {STARTUP_TIMEOUT_S}s:\n{router.stderr_tail()}")
    if addr is None:
        router.stop()
        pytest.fail(f"router exited (code {proc.returncode}) before listening:\n{router.stderr_tail()}")
    router.addr = addr
    return router


def in_thread(fn: Callable[[], Any]) -> "queue.Queue[Any]":
    """Run `fn` in a daemon thread; its result (or exception) arrives on the returned queue."""
    out: "queue.Queue[Any]" = queue.Queue()

    def run() -> None:
        try:
            out.put(fn())
        except BaseException as e:  # noqa: BLE001 - handed to the test
            out.put(e)

    threading.Thread(target=run, daemon=True).start()
    return out
