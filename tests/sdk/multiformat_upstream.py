"""A hermetic mock upstream that speaks every provider format the router targets.

One threaded HTTP/1.1 server on 127.0.0.1:0 answers, by path:

* ``POST /v1/chat/completions``       OpenAI chat completions (plain JSON and SSE ``data:`` frames)
* ``POST /v1/messages``                Anthropic Messages (plain JSON and SSE with ``event:`` lines)
* ``POST /v1/messages/count_tokens``   Anthropic token count -> ``{"input_tokens": 42}``
* ``POST /v1/responses``               OpenAI Responses (plain JSON and SSE), for a provider marked
                                       ``responses = true``
* ``POST /api/chat``                   Ollama native chat (NDJSON stream by default, JSON with
                                       ``"stream": false``)
* ``GET  /api/tags``, ``POST /api/show``, ``GET /``   Ollama discovery endpoints

Every request is recorded (method, path, headers, body bytes). Behaviour is chosen by the request:

* tools present and no tool result in the conversation -> the assistant calls the first tool with
  ``TOOL_ARGS`` (streamed in ``ARG_PIECE``-byte pieces where the format streams arguments);
* a tool result in the conversation -> the text ``tool said: <result>``;
* a structured-output request (OpenAI ``response_format`` json_schema, Anthropic
  ``output_config.format``, Ollama ``format`` object) -> the JSON text of ``STRUCT_ANSWER``;
* a model containing ``think`` -> reasoning text before the answer;
* a model containing ``err-NNN`` -> status NNN with that format's error body;
* a model containing ``midfail`` -> the stream starts, then the format's own error event;
  ``middrop`` -> the stream starts, then the connection is closed without the stream's end.

Each format validates requests roughly like the real service (required fields, roles, content
shapes, auth headers, tool-call/tool-result pairing, and for Anthropic and OpenAI unknown top-level
keys) and answers 4xx in its own error shape otherwise, so translation mistakes surface as errors
that name the problem.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# --------------------------------------------------------------------------- fixed replies

OPENAI_KEY = "sk-openai-provider-secret"
ANTH_KEY = "sk-ant-provider-secret"

OPENAI_TEXT = "hello from the openai upstream"
ANTH_TEXT = "hello from the anthropic upstream"
OLLAMA_TEXT = "hello from the ollama upstream"

OPENAI_USAGE = (11, 7)  # prompt, completion
ANTH_USAGE = (13, 5)  # input, output
OLLAMA_USAGE = (17, 9)  # prompt_eval_count, eval_count

ANTH_TOOL_PREFACE = "Let me check the weather."
TOOL_ARGS = {"city": "Paris", "unit": "celsius"}
TOOL_ARGS_TEXT = json.dumps(TOOL_ARGS)
ARG_PIECE = 7  # bytes per streamed argument fragment (Claude Code saw 7-byte pieces)

OPENAI_CALL_ID = "call_mock_1"
ANTH_TOOL_ID = "toolu_mock_1"

STRUCT_ANSWER = {"answer": "forty-two"}
# What a model that fences and trails its JSON sends (models named `…brokenjson…`, OpenAI
# handler): the response-healing plugin repairs it to STRUCT_ANSWER-like JSON.
BROKEN_JSON_TEXT = "Here you go:\n```json\n{'answer': 'forty-two', tags: ['a', 'b',],}\n```"
HEALED_JSON = {"answer": "forty-two", "tags": ["a", "b"]}
STRUCT_SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string"}},
    "required": ["answer"],
    "additionalProperties": False,
}

COUNT_TOKENS = 42

# Reasoning: a model whose name contains "think" answers with reasoning text first (OpenAI-compatible
# `reasoning_content` as vLLM/DeepSeek send it, an Anthropic thinking block, Ollama `thinking`).
THINK_TEXT = "Let me think about that."
THINK_SIGNATURE = "sig_mock_opaque"

# A Responses-capable OpenAI provider (`responses = true`) answers /v1/responses itself.
RESPONSES_TEXT = "hello from the openai responses upstream"
RESPONSES_USAGE = (19, 3)

ANTH_ERROR_MESSAGES = {
    429: "Number of request tokens has exceeded your per-minute rate limit (mock upstream)",
    529: "Overloaded (mock upstream)",
}
ANTH_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
OPENAI_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    429: "rate_limit_exceeded",
    500: "server_error",
    503: "server_error",
}

MIDFAIL_OPENAI = "mock openai upstream failed mid-stream"
MIDFAIL_OLLAMA = "mock ollama upstream failed mid-stream"
MIDFAIL_ANTH = "Overloaded"  # what Anthropic sends in a mid-stream overloaded_error

OLLAMA_MODELS = ["llama3.2:latest", "llama-tools:latest"]


# Sent with every err-NNN reply of the OpenAI and Anthropic handlers: the back-off hint that
# SDKs honour, which must survive a cross-format route (the router's documented fields).
BACKOFF_HEADERS = {"retry-after": "7", "retry-after-ms": "7000"}


def anth_error_message(status: int) -> str:
    return ANTH_ERROR_MESSAGES.get(status, f"mock anthropic upstream error {status}")


def openai_error_message(status: int) -> str:
    return f"mock openai upstream error {status}"


def ollama_error_message(status: int) -> str:
    return f"mock ollama upstream error {status}"


def pieces(text: str, n: int) -> list[str]:
    return [text[i : i + n] for i in range(0, len(text), n)]


TEXT_PIECES = 4  # text is streamed in pieces of this many characters


# --------------------------------------------------------------------------- recording


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names (last value wins)
    raw_headers: list[tuple[str, str]]
    body_bytes: bytes
    body: Any  # parsed JSON, or None
    response_status: int | None = None
    # What the mock sent back: the body of a plain response, or the payload of every chunk of a
    # stream (chunk framing removed), so passthrough can be checked byte for byte.
    response_bytes: bytearray = field(default_factory=bytearray)


@dataclass
class MultiUpstream:
    port: int = 0
    requests: list[Recorded] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def record(self, req: Recorded) -> None:
        with self.lock:
            self.requests.append(req)

    def find(self, marker: str) -> list[Recorded]:
        needle = marker.encode()
        with self.lock:
            return [r for r in self.requests if needle in r.body_bytes]

    def find_one(self, marker: str) -> Recorded:
        found = self.find(marker)
        assert len(found) == 1, (
            f"expected exactly one upstream request containing {marker!r}, got {len(found)}: "
            f"{[(r.method, r.path) for r in found]}"
        )
        return found[0]


class _Drop(Exception):
    """Raised to abandon the connection mid-response (simulated upstream crash)."""


# --------------------------------------------------------------------------- helpers


def text_of(content: Any) -> str:
    """Flatten a message content (string or list of text-ish parts) to its text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for p in content:
            if isinstance(p, str):
                out.append(p)
            elif isinstance(p, dict):
                if isinstance(p.get("text"), str):
                    out.append(p["text"])
                elif isinstance(p.get("content"), (str, list)):
                    out.append(text_of(p["content"]))
        return "".join(out)
    return ""


class Invalid(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


OPENAI_CHAT_KEYS = {
    "model", "messages", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs",
    "max_tokens", "max_completion_tokens", "n", "presence_penalty", "response_format", "seed",
    "service_tier", "stop", "stream", "stream_options", "temperature", "top_p", "tools",
    "tool_choice", "parallel_tool_calls", "user", "store", "reasoning_effort", "modalities",
    "audio", "prediction", "web_search_options", "verbosity", "prompt_cache_key",
    "safety_identifier", "metadata",
}  # fmt: skip

ANTH_MESSAGES_KEYS = {
    "model", "messages", "max_tokens", "system", "metadata", "stop_sequences", "stream",
    "temperature", "top_p", "top_k", "tools", "tool_choice", "thinking", "output_config",
    "container", "context_management", "service_tier", "mcp_servers", "inference_geo", "speed",
    "cache_control", "diagnostics",
}  # fmt: skip

ANTH_COUNT_KEYS = {
    "model", "messages", "system", "tools", "tool_choice", "thinking", "output_config",
    "cache_control", "speed", "context_management", "mcp_servers",
}  # fmt: skip

ANTH_BLOCK_TYPES = {
    "text", "image", "document", "search_result", "tool_use", "tool_result", "thinking",
    "redacted_thinking", "server_tool_use", "web_search_tool_result", "container_upload",
}  # fmt: skip


def validate_openai_chat(body: Any, headers: dict[str, str]) -> None:
    if headers.get("authorization") != f"Bearer {OPENAI_KEY}":
        raise Invalid(401, f"Incorrect API key provided: {headers.get('authorization')!r}")
    if not isinstance(body, dict):
        raise Invalid(400, "body is not a JSON object")
    extra = sorted(set(body) - OPENAI_CHAT_KEYS)
    if extra:
        raise Invalid(400, f"Unrecognized request argument supplied: {', '.join(extra)}")
    if not isinstance(body.get("model"), str):
        raise Invalid(400, "you must provide a model parameter")
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise Invalid(400, "'messages' must be a non-empty array")
    open_calls: set[str] = set()
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise Invalid(400, f"messages[{i}] is not an object")
        role = m.get("role")
        if role not in ("system", "developer", "user", "assistant", "tool"):
            raise Invalid(400, f"messages[{i}].role: invalid value {role!r}")
        content = m.get("content")
        if isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, dict) or part.get("type") not in (
                    "text", "image_url", "input_audio", "file", "refusal",
                ):  # fmt: skip
                    raise Invalid(400, f"messages[{i}].content[{j}]: invalid content part {part!r}")
        elif content is None:
            if not (role == "assistant" and m.get("tool_calls")):
                raise Invalid(400, f"messages[{i}].content: null is only valid for assistant tool calls")
        elif not isinstance(content, str):
            raise Invalid(400, f"messages[{i}].content: invalid type {type(content).__name__}")
        if role == "assistant" and m.get("tool_calls") is not None:
            for j, tc in enumerate(m["tool_calls"]):
                fn = tc.get("function") or {}
                if tc.get("type") != "function" or not tc.get("id") or not isinstance(fn.get("name"), str):
                    raise Invalid(400, f"messages[{i}].tool_calls[{j}]: invalid tool call {tc!r}")
                if not isinstance(fn.get("arguments"), str):
                    raise Invalid(400, f"messages[{i}].tool_calls[{j}].function.arguments must be a string")
                open_calls.add(tc["id"])
        if role == "tool":
            if m.get("tool_call_id") not in open_calls:
                raise Invalid(
                    400,
                    f"messages[{i}]: messages with role 'tool' must be a response to a preceding message "
                    f"with 'tool_calls' (tool_call_id {m.get('tool_call_id')!r})",
                )
    for j, t in enumerate(body.get("tools") or []):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(fn, dict) or not fn.get("name"):
            raise Invalid(400, f"tools[{j}]: invalid tool {t!r}")
    rf = body.get("response_format")
    if rf is not None:
        if not isinstance(rf, dict) or rf.get("type") not in ("text", "json_object", "json_schema"):
            raise Invalid(400, f"response_format: invalid value {rf!r}")
        if rf["type"] == "json_schema":
            js = rf.get("json_schema")
            if not isinstance(js, dict) or not js.get("name") or not isinstance(js.get("schema"), dict):
                raise Invalid(400, f"response_format.json_schema: needs name and schema, got {js!r}")


def validate_anthropic(body: Any, headers: dict[str, str], count: bool) -> None:
    if headers.get("x-api-key") != ANTH_KEY:
        raise Invalid(401, f"invalid x-api-key {headers.get('x-api-key')!r}")
    if not headers.get("anthropic-version"):
        raise Invalid(400, "anthropic-version: header is required")
    if not isinstance(body, dict):
        raise Invalid(400, "body is not a JSON object")
    allowed = ANTH_COUNT_KEYS if count else ANTH_MESSAGES_KEYS
    for k in body:
        if k not in allowed:
            raise Invalid(400, f"{k}: Extra inputs are not permitted")
    if not isinstance(body.get("model"), str):
        raise Invalid(400, "model: Field required")
    if not count:
        mt = body.get("max_tokens")
        if not isinstance(mt, int) or isinstance(mt, bool) or mt < 1:
            raise Invalid(400, f"max_tokens: Field required (a positive integer), got {mt!r}")
    system = body.get("system")
    if system is not None and not isinstance(system, str):
        if not isinstance(system, list) or any(
            not isinstance(b, dict) or b.get("type") != "text" or not isinstance(b.get("text"), str) for b in system
        ):
            raise Invalid(400, f"system: must be a string or a list of text blocks, got {system!r}")
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise Invalid(400, "messages: Field required (non-empty list)")
    prev_tool_ids: set[str] = set()
    for i, m in enumerate(msgs):
        if isinstance(m, dict) and m.get("role") == "system":
            # Mid-conversation system turn: after a user turn, followed by an assistant turn or
            # nothing, holding a string or text blocks (Anthropic's placement rule).
            nxt = msgs[i + 1] if i + 1 < len(msgs) else None
            c = m.get("content")
            if (
                i == 0
                or msgs[i - 1].get("role") != "user"
                or (nxt is not None and nxt.get("role") != "assistant")
                or not (isinstance(c, str) or (isinstance(c, list) and all(b.get("type") == "text" for b in c)))
            ):
                raise Invalid(400, f"messages.{i}: a system message must follow a user turn and precede an assistant turn")
            prev_tool_ids = set()
            continue
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise Invalid(400, f'messages.{i}.role: Input should be "user" or "assistant", got {m!r}')
        content = m.get("content")
        this_tool_ids: set[str] = set()
        if isinstance(content, str):
            if not content and m["role"] == "user":
                raise Invalid(400, f"messages.{i}: user messages must have non-empty content")
        elif isinstance(content, list):
            for j, b in enumerate(content):
                if not isinstance(b, dict) or b.get("type") not in ANTH_BLOCK_TYPES:
                    raise Invalid(400, f"messages.{i}.content.{j}: invalid content block {b!r}")
                if b["type"] == "text" and (not isinstance(b.get("text"), str) or not b["text"]):
                    raise Invalid(400, f"messages.{i}.content.{j}: text content blocks must be non-empty")
                if b["type"] == "tool_use":
                    if m["role"] != "assistant" or not b.get("id") or not b.get("name"):
                        raise Invalid(400, f"messages.{i}.content.{j}: invalid tool_use block {b!r}")
                    if not isinstance(b.get("input"), dict):
                        raise Invalid(400, f"messages.{i}.content.{j}.input: Input should be a valid dictionary")
                    this_tool_ids.add(b["id"])
                if b["type"] == "tool_result":
                    if m["role"] != "user":
                        raise Invalid(400, f"messages.{i}.content.{j}: tool_result only in user turns")
                    if b.get("tool_use_id") not in prev_tool_ids:
                        raise Invalid(
                            400,
                            f"messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` blocks: "
                            f"{b.get('tool_use_id')}. Each `tool_result` block must have a corresponding "
                            "`tool_use` block in the previous message.",
                        )
        else:
            raise Invalid(400, f"messages.{i}.content: Input should be a string or a list, got {content!r}")
        prev_tool_ids = this_tool_ids
    for j, t in enumerate(body.get("tools") or []):
        if not isinstance(t, dict) or not t.get("name"):
            raise Invalid(400, f"tools.{j}: invalid tool {t!r}")
        if "type" not in t or t.get("type") == "custom":
            if not isinstance(t.get("input_schema"), dict):
                raise Invalid(400, f"tools.{j}.input_schema: Field required")
    oc = body.get("output_config")
    if oc is not None:
        fmt = oc.get("format") if isinstance(oc, dict) else None
        if fmt is not None and (
            not isinstance(fmt, dict) or fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict)
        ):
            raise Invalid(400, f"output_config.format: invalid value {fmt!r}")


def validate_ollama(body: Any) -> None:
    if not isinstance(body, dict):
        raise Invalid(400, "invalid JSON body")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise Invalid(400, "model is required")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise Invalid(400, "json: cannot unmarshal into Go struct field ChatRequest.stream of type bool")
    msgs = body.get("messages")
    if not isinstance(msgs, list):
        raise Invalid(400, "json: cannot unmarshal messages")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "tool"):
            raise Invalid(400, f"messages[{i}]: invalid role in {m!r}")
        if "content" in m and not isinstance(m["content"], str):
            raise Invalid(
                400,
                f"json: cannot unmarshal {type(m['content']).__name__} into Go struct field "
                "Message.messages.content of type string",
            )
        imgs = m.get("images")
        if imgs is not None and (not isinstance(imgs, list) or any(not isinstance(x, str) for x in imgs)):
            raise Invalid(400, f"messages[{i}].images: must be a list of base64 strings")
        for j, tc in enumerate(m.get("tool_calls") or []):
            fn = tc.get("function") if isinstance(tc, dict) else None
            if not isinstance(fn, dict) or not fn.get("name"):
                raise Invalid(400, f"messages[{i}].tool_calls[{j}]: invalid tool call {tc!r}")
            if not isinstance(fn.get("arguments"), dict):
                raise Invalid(
                    400,
                    f"json: cannot unmarshal {type(fn.get('arguments')).__name__} into Go struct field "
                    "ToolCallFunction.messages.tool_calls.function.arguments of type api.ToolCallFunctionArguments",
                )
    for j, t in enumerate(body.get("tools") or []):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(fn, dict) or not fn.get("name"):
            raise Invalid(400, f"tools[{j}]: invalid tool {t!r}")
    opts = body.get("options")
    if opts is not None and not isinstance(opts, dict):
        raise Invalid(400, "options must be an object")


# --------------------------------------------------------------------------- handler


def make_handler(state: MultiUpstream) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

        # -- io -------------------------------------------------------------------
        def _read_body(self) -> bytes:
            te = (self.headers.get("Transfer-Encoding") or "").lower()
            if "chunked" in te:
                out = bytearray()
                while True:
                    size_line = self.rfile.readline()
                    size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return bytes(out)
                    out += self.rfile.read(size)
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _send(self, status: int, ctype: str, data: bytes, extra: dict[str, str] | None = None) -> None:
            self._rec.response_status = status
            self._rec.response_bytes += data
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            self.wfile.flush()

        def _json(self, status: int, obj: Any, extra: dict[str, str] | None = None) -> None:
            self._send(status, "application/json", json.dumps(obj).encode(), extra)

        def _start_stream(self, ctype: str, extra: dict[str, str] | None = None) -> None:
            self._rec.response_status = 200
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.flush()

        def _chunk(self, data: bytes) -> None:
            self._rec.response_bytes += data
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        def _end_stream(self) -> None:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

        def _drop(self) -> None:
            """Abandon the response: no terminating chunk, connection closed."""
            self.close_connection = True
            try:
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            raise _Drop()

        def _record(self, body_bytes: bytes) -> Any:
            try:
                body = json.loads(body_bytes) if body_bytes else None
            except ValueError:
                body = None
            self._rec = Recorded(
                method=self.command,
                path=self.path,
                headers={k.lower(): v for k, v in self.headers.items()},
                raw_headers=list(self.headers.items()),
                body_bytes=body_bytes,
                body=body,
            )
            state.record(self._rec)
            return body

        # -- dispatch ---------------------------------------------------------------
        def do_HEAD(self) -> None:  # noqa: N802
            self.do_GET()

        def do_GET(self) -> None:  # noqa: N802
            self._record(b"")
            path = self.path.split("?", 1)[0]
            if path == "/":
                self._send(200, "text/plain; charset=utf-8", b"Ollama is running")
            elif path == "/api/tags":
                self._json(
                    200,
                    {
                        "models": [
                            {
                                "name": n,
                                "model": n,
                                "modified_at": "2026-11-01T00:00:00Z",
                                "size": 2019393189,
                                "digest": "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72",
                                "details": {
                                    "parent_model": "",
                                    "format": "gguf",
                                    "family": "llama",
                                    "families": ["llama"],
                                    "parameter_size": "3.2B",
                                    "quantization_level": "Q4_K_M",
                                },
                            }
                            for n in OLLAMA_MODELS
                        ]
                    },
                )
            else:
                self._json(404, {"error": f"no route {self.path}"})

        def do_POST(self) -> None:  # noqa: N802
            body_bytes = self._read_body()
            body = self._record(body_bytes)
            path = self.path.split("?", 1)[0]
            try:
                if path == "/v1/chat/completions":
                    self._openai(body)
                elif path == "/v1/messages":
                    self._anthropic(body)
                elif path == "/v1/responses":
                    self._responses(body)
                elif path == "/v1/messages/count_tokens":
                    self._anthropic_count(body)
                elif path == "/api/chat":
                    self._ollama(body)
                elif path == "/api/show":
                    self._json(
                        200,
                        {
                            "modelfile": "",
                            "parameters": "",
                            "template": "",
                            "details": {"format": "gguf", "family": "llama"},
                            "model_info": {},
                            "capabilities": ["completion", "tools", "vision"],
                        },
                    )
                else:
                    self._json(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})
            except _Drop:
                return
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        # -- OpenAI chat ------------------------------------------------------------
        def _openai(self, body: Any) -> None:
            try:
                validate_openai_chat(body, {k.lower(): v for k, v in self.headers.items()})
            except Invalid as e:
                self._json(
                    e.status,
                    {"error": {"message": e.message, "type": OPENAI_ERROR_TYPES.get(e.status, "invalid_request_error"),
                               "param": None, "code": None}},
                )  # fmt: skip
                return
            model = body["model"]
            m = re.search(r"err-(\d{3})", model)
            if m:
                status = int(m.group(1))
                self._json(
                    status,
                    {"error": {"message": openai_error_message(status), "type": OPENAI_ERROR_TYPES.get(status, "api_error"),
                               "param": None, "code": None}},
                    BACKOFF_HEADERS | {"x-request-id": "req_mock_err", "x-ratelimit-remaining-requests": "0"},
                )  # fmt: skip
                return
            msgs = body["messages"]
            tool_msgs = [x for x in msgs if x.get("role") == "tool"]
            tools = body.get("tools") or []
            rf = body.get("response_format") or {}
            call = None
            if tool_msgs:
                text: str | None = "tool said: " + text_of(tool_msgs[-1].get("content"))
            elif tools:
                text = None
                call = tools[0]["function"]["name"]
            elif rf.get("type") == "json_schema":
                text = json.dumps(STRUCT_ANSWER)
            elif "brokenjson" in model:
                text = BROKEN_JSON_TEXT
            else:
                text = OPENAI_TEXT
            if body.get("stream"):
                self._openai_stream(model, body, text, call)
                return
            message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
            if "think" in model:
                message["reasoning_content"] = THINK_TEXT
            if call:
                message["tool_calls"] = [
                    {"id": OPENAI_CALL_ID, "type": "function", "function": {"name": call, "arguments": TOOL_ARGS_TEXT}}
                ]
            p, c = OPENAI_USAGE
            self._json(
                200,
                {
                    "id": "chatcmpl-mock-1",
                    "object": "chat.completion",
                    "created": 1700000000,
                    "model": model,
                    "choices": [
                        {"index": 0, "message": message, "logprobs": None,
                         "finish_reason": "tool_calls" if call else "stop"}
                    ],
                    "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c},
                },
            )  # fmt: skip

        def _openai_stream(self, model: str, body: dict[str, Any], text: str | None, call: str | None) -> None:
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            self._start_stream("text/event-stream")

            def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
                c: dict[str, Any] = {
                    "id": "chatcmpl-mock-stream",
                    "object": "chat.completion.chunk",
                    "created": 1700000000,
                    "model": model,
                    "system_fingerprint": "fp_mock",
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
                }
                if include_usage:
                    c["usage"] = None
                return b"data: " + json.dumps(c).encode() + b"\n\n"

            if call:
                self._chunk(
                    chunk(
                        {"role": "assistant", "content": None, "tool_calls": [
                            {"index": 0, "id": OPENAI_CALL_ID, "type": "function",
                             "function": {"name": call, "arguments": ""}}]},
                        None,
                    )
                )  # fmt: skip
                for piece in pieces(TOOL_ARGS_TEXT, ARG_PIECE):
                    self._chunk(chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}, None))
                finish = "tool_calls"
            else:
                self._chunk(chunk({"role": "assistant", "content": ""}, None))
                if "think" in model:
                    for piece in pieces(THINK_TEXT, TEXT_PIECES):
                        self._chunk(chunk({"reasoning_content": piece}, None))
                for i, piece in enumerate(pieces(text or "", TEXT_PIECES)):
                    self._chunk(chunk({"content": piece}, None))
                    if i == 1 and "midfail" in model:
                        err = {"error": {"message": MIDFAIL_OPENAI, "type": "server_error", "param": None, "code": None}}
                        self._chunk(b"data: " + json.dumps(err).encode() + b"\n\n")
                        self._end_stream()
                        return
                    if i == 1 and "middrop" in model:
                        self._drop()
                finish = "stop"
            self._chunk(chunk({}, finish))
            if include_usage:
                p, c = OPENAI_USAGE
                self._chunk(
                    b"data: "
                    + json.dumps(
                        {
                            "id": "chatcmpl-mock-stream",
                            "object": "chat.completion.chunk",
                            "created": 1700000000,
                            "model": model,
                            "system_fingerprint": "fp_mock",
                            "choices": [],
                            "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c},
                        }
                    ).encode()
                    + b"\n\n"
                )
            self._chunk(b"data: [DONE]\n\n")
            self._end_stream()

        # -- Anthropic --------------------------------------------------------------
        def _anth_error(self, status: int, message: str) -> None:
            self._json(
                status,
                {"type": "error", "error": {"type": ANTH_ERROR_TYPES.get(status, "api_error"), "message": message},
                 "request_id": "req_mock_err"},
                BACKOFF_HEADERS | {"request-id": "req_mock_err", "anthropic-ratelimit-requests-remaining": "0"},
            )  # fmt: skip

        def _anthropic_count(self, body: Any) -> None:
            try:
                validate_anthropic(body, {k.lower(): v for k, v in self.headers.items()}, count=True)
            except Invalid as e:
                self._anth_error(e.status, e.message)
                return
            self._json(200, {"input_tokens": COUNT_TOKENS}, {"request-id": "req_mock_count"})

        def _anthropic(self, body: Any) -> None:
            try:
                validate_anthropic(body, {k.lower(): v for k, v in self.headers.items()}, count=False)
            except Invalid as e:
                self._anth_error(e.status, e.message)
                return
            model = body["model"]
            m = re.search(r"err-(\d{3})", model)
            if m:
                status = int(m.group(1))
                self._anth_error(status, anth_error_message(status))
                return
            msgs = body["messages"]
            results = [
                b
                for x in msgs
                if x["role"] == "user" and isinstance(x["content"], list)
                for b in x["content"]
                if b.get("type") == "tool_result"
            ]
            tools = body.get("tools") or []
            fmt = (body.get("output_config") or {}).get("format")
            blocks: list[dict[str, Any]]
            if results:
                blocks = [{"type": "text", "text": "tool said: " + text_of(results[-1].get("content"))}]
                stop = "end_turn"
            elif tools:
                blocks = [
                    {"type": "text", "text": ANTH_TOOL_PREFACE},
                    {"type": "tool_use", "id": ANTH_TOOL_ID, "name": tools[0]["name"], "input": TOOL_ARGS},
                ]
                stop = "tool_use"
            elif fmt:
                blocks = [{"type": "text", "text": json.dumps(STRUCT_ANSWER)}]
                stop = "end_turn"
            else:
                blocks = [{"type": "text", "text": ANTH_TEXT}]
                stop = "end_turn"
            if "think" in model:
                blocks = [{"type": "thinking", "thinking": THINK_TEXT, "signature": THINK_SIGNATURE}, *blocks]
            inp, out = ANTH_USAGE
            if body.get("stream"):
                self._anthropic_stream(model, blocks, stop)
                return
            self._json(
                200,
                {
                    "id": "msg_mock_1",
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": blocks,
                    "stop_reason": stop,
                    "stop_sequence": None,
                    "usage": {"input_tokens": inp, "output_tokens": out,
                              "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
                },
                {"request-id": "req_mock_msg"},
            )  # fmt: skip

        def _anthropic_stream(self, model: str, blocks: list[dict[str, Any]], stop: str) -> None:
            self._start_stream("text/event-stream; charset=utf-8", {"request-id": "req_mock_stream"})

            def ev(obj: dict[str, Any]) -> None:
                self._chunk(f"event: {obj['type']}\ndata: {json.dumps(obj)}\n\n".encode())

            inp, out = ANTH_USAGE
            ev(
                {
                    "type": "message_start",
                    "message": {
                        "id": "msg_mock_stream", "type": "message", "role": "assistant", "model": model,
                        "content": [], "stop_reason": None, "stop_sequence": None,
                        "usage": {"input_tokens": inp, "output_tokens": 1,
                                  "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
                    },
                }
            )  # fmt: skip
            ev({"type": "ping"})
            for idx, b in enumerate(blocks):
                if b["type"] == "text":
                    ev({"type": "content_block_start", "index": idx, "content_block": {"type": "text", "text": ""}})
                    for i, piece in enumerate(pieces(b["text"], TEXT_PIECES)):
                        ev({"type": "content_block_delta", "index": idx,
                            "delta": {"type": "text_delta", "text": piece}})  # fmt: skip
                        if i == 1 and "midfail" in model:
                            ev({"type": "error", "error": {"type": "overloaded_error", "message": MIDFAIL_ANTH}})
                            self._end_stream()
                            return
                        if i == 1 and "middrop" in model:
                            self._drop()
                elif b["type"] == "thinking":
                    ev({"type": "content_block_start", "index": idx,
                        "content_block": {"type": "thinking", "thinking": "", "signature": ""}})  # fmt: skip
                    for piece in pieces(b["thinking"], TEXT_PIECES):
                        ev({"type": "content_block_delta", "index": idx,
                            "delta": {"type": "thinking_delta", "thinking": piece}})  # fmt: skip
                    ev({"type": "content_block_delta", "index": idx,
                        "delta": {"type": "signature_delta", "signature": b["signature"]}})  # fmt: skip
                else:
                    ev({"type": "content_block_start", "index": idx,
                        "content_block": {"type": "tool_use", "id": b["id"], "name": b["name"], "input": {}}})  # fmt: skip
                    for piece in pieces(json.dumps(b["input"]), ARG_PIECE):
                        ev({"type": "content_block_delta", "index": idx,
                            "delta": {"type": "input_json_delta", "partial_json": piece}})  # fmt: skip
                ev({"type": "content_block_stop", "index": idx})
            ev({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": out}})  # fmt: skip
            ev({"type": "message_stop"})
            self._end_stream()

        # -- OpenAI Responses (a provider with `responses = true`) ----------------------
        def _responses(self, body: Any) -> None:
            hdrs = {k.lower(): v for k, v in self.headers.items()}
            if hdrs.get("authorization") != f"Bearer {OPENAI_KEY}":
                self._json(401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error",
                                           "param": None, "code": "invalid_api_key"}})  # fmt: skip
                return
            if not isinstance(body, dict) or not isinstance(body.get("model"), str) or "input" not in body:
                self._json(400, {"error": {"message": "model and input are required", "type": "invalid_request_error",
                                           "param": None, "code": None}})  # fmt: skip
                return
            model = body["model"]
            m = re.search(r"err-(\d{3})", model)
            if m:
                status = int(m.group(1))
                self._json(
                    status,
                    {"error": {"message": openai_error_message(status), "type": OPENAI_ERROR_TYPES.get(status, "api_error"),
                               "param": None, "code": None}},
                )  # fmt: skip
                return
            inp, out = RESPONSES_USAGE
            item_done = {
                "type": "message", "id": "msg_resp_mock", "status": "completed", "role": "assistant",
                "content": [{"type": "output_text", "text": RESPONSES_TEXT, "annotations": [], "logprobs": []}],
            }  # fmt: skip

            def response(status: str, output: list[Any], usage: Any) -> dict[str, Any]:
                return {
                    "id": "resp_mock_1", "object": "response", "created_at": 1700000000, "status": status,
                    "error": None, "incomplete_details": None, "instructions": body.get("instructions"),
                    "max_output_tokens": body.get("max_output_tokens"), "model": model, "output": output,
                    "parallel_tool_calls": True, "previous_response_id": None, "store": False,
                    "temperature": 1.0, "tool_choice": "auto", "tools": [], "top_p": 1.0, "truncation": "disabled",
                    "usage": usage, "metadata": {},
                }  # fmt: skip

            usage = {"input_tokens": inp, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": out,
                     "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": inp + out}  # fmt: skip
            if not body.get("stream"):
                self._json(200, response("completed", [item_done], usage))
                return
            self._start_stream("text/event-stream; charset=utf-8")
            seq = 0

            def ev(obj: dict[str, Any]) -> None:
                nonlocal seq
                obj = {"type": obj["type"], "sequence_number": seq, **{k: v for k, v in obj.items() if k != "type"}}
                seq += 1
                self._chunk(f"event: {obj['type']}\ndata: {json.dumps(obj)}\n\n".encode())

            item_open = {**item_done, "status": "in_progress", "content": []}
            part0 = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            ev({"type": "response.created", "response": response("in_progress", [], None)})
            ev({"type": "response.in_progress", "response": response("in_progress", [], None)})
            ev({"type": "response.output_item.added", "output_index": 0, "item": item_open})
            ev({"type": "response.content_part.added", "item_id": "msg_resp_mock", "output_index": 0,
                "content_index": 0, "part": part0})  # fmt: skip
            for piece in pieces(RESPONSES_TEXT, TEXT_PIECES):
                ev({"type": "response.output_text.delta", "item_id": "msg_resp_mock", "output_index": 0,
                    "content_index": 0, "delta": piece, "logprobs": []})  # fmt: skip
            ev({"type": "response.output_text.done", "item_id": "msg_resp_mock", "output_index": 0,
                "content_index": 0, "text": RESPONSES_TEXT, "logprobs": []})  # fmt: skip
            ev({"type": "response.content_part.done", "item_id": "msg_resp_mock", "output_index": 0,
                "content_index": 0, "part": item_done["content"][0]})  # fmt: skip
            ev({"type": "response.output_item.done", "output_index": 0, "item": item_done})
            ev({"type": "response.completed", "response": response("completed", [item_done], usage)})
            self._end_stream()

        # -- Ollama -----------------------------------------------------------------
        def _ollama(self, body: Any) -> None:
            try:
                validate_ollama(body)
            except Invalid as e:
                self._json(e.status, {"error": e.message})
                return
            model = body["model"]
            m = re.search(r"err-(\d{3})", model)
            if m:
                status = int(m.group(1))
                self._json(status, {"error": ollama_error_message(status)})
                return
            msgs = body["messages"]
            tool_msgs = [x for x in msgs if x.get("role") == "tool"]
            tools = body.get("tools") or []
            call = None
            if tool_msgs:
                text = "tool said: " + tool_msgs[-1].get("content", "")
            elif tools:
                text = ""
                call = tools[0]["function"]["name"]
            elif isinstance(body.get("format"), dict) or body.get("format") == "json":
                text = json.dumps(STRUCT_ANSWER)
            else:
                text = OLLAMA_TEXT
            stream = body.get("stream", True)  # Ollama streams unless told otherwise
            prompt, evals = OLLAMA_USAGE
            final = {
                "model": model,
                "created_at": "2026-11-21T00:00:01.000000Z",
                "done": True,
                "done_reason": "stop",
                "total_duration": 123456789,
                "load_duration": 1234567,
                "prompt_eval_count": prompt,
                "prompt_eval_duration": 2345678,
                "eval_count": evals,
                "eval_duration": 3456789,
            }
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if "think" in model:
                message["thinking"] = THINK_TEXT
            if call:
                message["tool_calls"] = [{"function": {"name": call, "arguments": TOOL_ARGS}}]
            if not stream:
                self._json(200, {**final, "message": message})
                return
            self._start_stream("application/x-ndjson")

            def line(obj: dict[str, Any]) -> None:
                self._chunk(json.dumps(obj).encode() + b"\n")

            def part(msg: dict[str, Any]) -> dict[str, Any]:
                return {"model": model, "created_at": "2026-11-21T00:00:00.500000Z", "message": msg, "done": False}

            if "think" in model:
                for piece in pieces(THINK_TEXT, TEXT_PIECES):
                    line(part({"role": "assistant", "content": "", "thinking": piece}))
            if call:
                line(part({k: v for k, v in message.items() if k != "thinking"}))
            else:
                for i, piece in enumerate(pieces(text, TEXT_PIECES)):
                    line(part({"role": "assistant", "content": piece}))
                    if i == 1 and "midfail" in model:
                        line({"error": MIDFAIL_OLLAMA})
                        self._end_stream()
                        return
                    if i == 1 and "middrop" in model:
                        self._drop()
            line({**final, "message": {"role": "assistant", "content": ""}})
            self._end_stream()

    return Handler


def start_multi_upstream() -> tuple[MultiUpstream, ThreadingHTTPServer]:
    state = MultiUpstream()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    server.daemon_threads = True
    state.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, name="multi-upstream", daemon=True).start()
    return state, server
