"""A tiny OTLP/HTTP (protobuf) collector for tests.

Accepts ``POST /v1/traces`` and ``POST /v1/metrics`` on 127.0.0.1 (a free
port), decodes each body with the official opentelemetry-proto classes and
keeps the decoded requests for assertions. Answers 200 with an empty
``Export*ServiceResponse``, or ``fail_with`` when a test sets it.

    with Receiver() as rx:
        ...point the exporter at rx.url...
        rx.wait_for(lambda: len(rx.spans()) >= 3)
"""

from __future__ import annotations

import gzip
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

PROTOBUF = "application/x-protobuf"


class Receiver:
    def __init__(self) -> None:
        self.traces: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.metrics: list[metrics_service_pb2.ExportMetricsServiceRequest] = []
        # (method, path, content-type, headers) of every request, accepted or not.
        self.requests: list[tuple[str, str, str, dict[str, str]]] = []
        # When set, every request is answered with this status (after being recorded).
        self.fail_with: int | None = None
        self._cond = threading.Condition()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> "Receiver":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def spans(self) -> list:
        """Every span received, in arrival order."""
        with self._cond:
            return [
                span
                for req in self.traces
                for rs in req.resource_spans
                for ss in rs.scope_spans
                for span in ss.spans
            ]

    def metric_list(self) -> list:
        """Every Metric received, in arrival order."""
        with self._cond:
            return [
                m
                for req in self.metrics
                for rm in req.resource_metrics
                for sm in rm.scope_metrics
                for m in sm.metrics
            ]

    def wait_for(self, predicate, timeout: float = 30.0) -> bool:
        """Waits until ``predicate()`` holds (re-checked on every request)."""
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    def _record(self, kind: str | None, decoded, request: tuple) -> None:
        with self._cond:
            self.requests.append(request)
            if kind == "traces":
                self.traces.append(decoded)
            elif kind == "metrics":
                self.metrics.append(decoded)
            self._cond.notify_all()


_ROUTES = {
    "/v1/traces": (
        "traces",
        trace_service_pb2.ExportTraceServiceRequest,
        trace_service_pb2.ExportTraceServiceResponse,
    ),
    "/v1/metrics": (
        "metrics",
        metrics_service_pb2.ExportMetricsServiceRequest,
        metrics_service_pb2.ExportMetricsServiceResponse,
    ),
}


def _handler(receiver: Receiver):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

        def _answer(self, status: int, body: bytes = b"", ctype: str = PROTOBUF) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            ctype = self.headers.get("Content-Type", "")
            request = ("POST", self.path, ctype, dict(self.headers.items()))
            route = _ROUTES.get(self.path)
            if route is None:
                receiver._record(None, None, request)
                return self._answer(404, b"not found", "text/plain")
            kind, request_cls, response_cls = route
            if ctype.split(";")[0].strip().lower() != PROTOBUF:
                receiver._record(None, None, request)
                return self._answer(415, b"only application/x-protobuf", "text/plain")
            if self.headers.get("Content-Encoding", "").lower() == "gzip":
                body = gzip.decompress(body)
            decoded = request_cls()
            try:
                decoded.ParseFromString(body)
            except DecodeError as e:
                receiver._record(None, None, request)
                return self._answer(400, str(e).encode(), "text/plain")
            receiver._record(kind, decoded, request)
            if receiver.fail_with is not None:
                return self._answer(receiver.fail_with)
            self._answer(200, response_cls().SerializeToString())

        def do_GET(self) -> None:
            receiver._record(None, None, ("GET", self.path, "", dict(self.headers.items())))
            self._answer(405, b"POST only", "text/plain")

    return Handler
