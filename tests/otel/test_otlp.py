"""The OTLP encoder and exporter (src/observe/otlp.rs) checked with the
official opentelemetry-proto classes.

`cargo test --test otlp_encode` (tests/otlp_encode.rs) writes a fixed span
batch and metrics batch to OTLP_FIXTURE_DIR and exports the same batches to
OTLP_RECEIVER_URL (receiver.py); the values asserted here are the ones that
file builds. Set OTLP_ENCODE_TEST_BIN to a prebuilt `otlp_encode` test binary
to skip cargo; CARGO (default `cargo`) and CARGO_TARGET_DIR are honoured.

Run: .venv/bin/python -m pytest -q tests/otel
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import tomllib
import urllib.error
import urllib.request

import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from receiver import Receiver

ROOT = pathlib.Path(__file__).resolve().parents[2]
SERVICE = "otlp-fixture"
TRACE_ID = bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")
CLIENT_PARENT = bytes.fromhex("00f067aa0ba902b7")
SERVER_SPAN = bytes([0x11] * 8)
CLIENT_SPAN = bytes([0x22] * 8)
FAILED_SPAN = bytes([0x33] * 8)
T0 = 1_700_000_000_000_000_000


def crate_version() -> str:
    with open(ROOT / "Cargo.toml", "rb") as f:
        return tomllib.load(f)["package"]["version"]


def run_encode_test(env_extra: dict[str, str]) -> None:
    env = dict(os.environ, **env_extra)
    prebuilt = os.environ.get("OTLP_ENCODE_TEST_BIN")
    if prebuilt:
        cmd = [prebuilt, "--test-threads=1", "--nocapture"]
    else:
        cargo = os.environ.get("CARGO", "cargo")
        if shutil.which(cargo) is None:
            pytest.skip("cargo not found and OTLP_ENCODE_TEST_BIN unset")
        cmd = [cargo, "test", "--quiet", "--test", "otlp_encode", "--",
               "--test-threads=1", "--nocapture"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout}\n{proc.stderr}"


@pytest.fixture(scope="module")
def produced(tmp_path_factory):
    """Runs the Rust side once: fixture files plus an export to a receiver."""
    out = tmp_path_factory.mktemp("otlp")
    with Receiver() as rx:
        run_encode_test({"OTLP_FIXTURE_DIR": str(out), "OTLP_RECEIVER_URL": rx.url})
        traces_raw = (out / "traces.pb").read_bytes()
        metrics_raw = (out / "metrics.pb").read_bytes()
        traces = trace_service_pb2.ExportTraceServiceRequest()
        traces.ParseFromString(traces_raw)
        metrics = metrics_service_pb2.ExportMetricsServiceRequest()
        metrics.ParseFromString(metrics_raw)
        yield {
            "traces": traces,
            "metrics": metrics,
            "traces_raw": traces_raw,
            "metrics_raw": metrics_raw,
            "receiver": rx,
        }


def attrs(kvs) -> dict:
    """KeyValue list → {key: python value} (arrays as lists)."""
    out = {}
    for kv in kvs:
        v = kv.value
        which = v.WhichOneof("value")
        if which == "array_value":
            out[kv.key] = [x.string_value for x in v.array_value.values]
        else:
            out[kv.key] = getattr(v, which)
    return out


def only(seq):
    assert len(seq) == 1, seq
    return seq[0]


# -- traces ---------------------------------------------------------------------


def check_traces(req: trace_service_pb2.ExportTraceServiceRequest) -> None:
    rs = only(req.resource_spans)
    assert attrs(rs.resource.attributes) == {"service.name": SERVICE}
    ss = only(rs.scope_spans)
    assert ss.scope.name == "opensourcellmrouter"
    assert ss.scope.version == crate_version()
    server, failed, client = ss.spans
    for span in ss.spans:
        assert span.trace_id == TRACE_ID
        assert span.trace_state == ""
        assert span.start_time_unix_nano < span.end_time_unix_nano

    assert server.name == "POST /v1/chat/completions"
    assert server.span_id == SERVER_SPAN
    assert server.parent_span_id == CLIENT_PARENT
    assert server.kind == trace_pb2.Span.SPAN_KIND_SERVER
    assert (server.start_time_unix_nano, server.end_time_unix_nano) == (T0, T0 + 250_000_000)
    assert attrs(server.attributes) == {
        "http.request.method": "POST",
        "url.path": "/v1/chat/completions",
        "http.response.status_code": 200,
        "router.overhead_ratio": 0.125,
        "router.streamed": False,
    }
    assert server.status.code == trace_pb2.Status.STATUS_CODE_UNSET
    assert not server.HasField("status")

    assert client.name == "chat mock-1"
    assert client.span_id == CLIENT_SPAN
    assert client.parent_span_id == SERVER_SPAN
    assert client.kind == trace_pb2.Span.SPAN_KIND_CLIENT
    a = attrs(client.attributes)
    assert a.pop("router.note") == "é" * 10_000
    assert a == {
        "gen_ai.operation.name": "chat",
        "gen_ai.system": "openai",
        "gen_ai.request.model": "mock-1",
        "gen_ai.response.model": "mock-1-2025",
        "gen_ai.usage.input_tokens": 12,
        "gen_ai.usage.output_tokens": 34,
        "gen_ai.response.finish_reasons": ["stop"],
    }
    # Types as the semantic conventions want them.
    kinds = {kv.key: kv.value.WhichOneof("value") for kv in client.attributes}
    assert kinds["gen_ai.usage.input_tokens"] == "int_value"
    assert kinds["gen_ai.response.finish_reasons"] == "array_value"
    assert client.status.code == trace_pb2.Status.STATUS_CODE_UNSET

    assert failed.span_id == FAILED_SPAN
    assert failed.parent_span_id == SERVER_SPAN
    assert failed.name == "chat llama-3"
    assert attrs(failed.attributes)["error.type"] == "connect_failed"
    assert failed.status.code == trace_pb2.Status.STATUS_CODE_ERROR
    assert failed.status.message == "cannot connect to 127.0.0.1:8080: connection refused"


def test_encoded_traces_decode_with_the_official_classes(produced):
    check_traces(produced["traces"])


def test_encoded_bytes_are_what_the_official_serializer_writes(produced):
    # Same fields, same order (by field number), defaults omitted, packed
    # repeated scalars: nothing the decoder skipped or had to reorder.
    assert produced["traces"].SerializeToString() == produced["traces_raw"]
    assert produced["metrics"].SerializeToString() == produced["metrics_raw"]


# -- metrics --------------------------------------------------------------------


def check_metrics(req: metrics_service_pb2.ExportMetricsServiceRequest) -> None:
    rm = only(req.resource_metrics)
    assert attrs(rm.resource.attributes) == {"service.name": SERVICE}
    sm = only(rm.scope_metrics)
    assert sm.scope.name == "opensourcellmrouter"
    assert sm.scope.version == crate_version()
    by_name = {m.name: m for m in sm.metrics}
    assert [m.name for m in sm.metrics] == [
        "osr.requests",
        "osr.log.lines.dropped",
        "osr.in_flight",
        "osr.request.duration",
    ], "points with one name are one metric"
    cumulative = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE

    requests = by_name["osr.requests"]
    assert (requests.unit, requests.description) == ("{request}", "Requests answered")
    assert requests.WhichOneof("data") == "sum"
    assert requests.sum.is_monotonic
    assert requests.sum.aggregation_temporality == cumulative
    points = requests.sum.data_points
    assert [attrs(p.attributes) for p in points] == [
        {"provider": "mock", "http.response.status_code": 200},
        {"provider": "llama", "http.response.status_code": 502},
    ]
    assert [p.as_int for p in points] == [7, 2]
    for p in points:
        assert p.WhichOneof("value") == "as_int"
        assert p.start_time_unix_nano == T0
        assert p.time_unix_nano == T0 + 60_000_000_000

    dropped = by_name["osr.log.lines.dropped"]
    p = only(dropped.sum.data_points)
    assert p.WhichOneof("value") == "as_int" and p.as_int == 0, "a zero value is still present"
    assert not p.attributes

    gauge = by_name["osr.in_flight"]
    assert gauge.WhichOneof("data") == "gauge"
    p = only(gauge.gauge.data_points)
    assert p.as_int == 3
    assert p.time_unix_nano == T0 + 60_000_000_000

    hist = by_name["osr.request.duration"]
    assert hist.WhichOneof("data") == "histogram"
    assert (hist.unit, hist.description) == ("s", "Total request duration")
    assert hist.histogram.aggregation_temporality == cumulative
    mock, llama = hist.histogram.data_points
    assert attrs(mock.attributes) == {"provider": "mock", "http.response.status_code": 200}
    assert list(mock.explicit_bounds) == [0.005, 0.01, 0.1, 1.0]
    assert list(mock.bucket_counts) == [1, 2, 3, 1, 0]
    assert mock.count == 7 == sum(mock.bucket_counts)
    assert mock.HasField("sum") and mock.sum == 1.75
    assert (mock.start_time_unix_nano, mock.time_unix_nano) == (T0, T0 + 60_000_000_000)
    assert attrs(llama.attributes)["provider"] == "llama"
    assert list(llama.bucket_counts) == [2, 0, 0, 0, 0]
    assert (llama.count, llama.sum) == (2, 0.004)


def test_encoded_metrics_decode_with_the_official_classes(produced):
    check_metrics(produced["metrics"])


# -- the exporter against the receiver --------------------------------------------


def test_exporter_posts_protobuf_to_the_receiver(produced):
    rx: Receiver = produced["receiver"]
    paths = sorted(path for _, path, _, _ in rx.requests)
    assert paths == ["/v1/metrics", "/v1/traces"], rx.requests
    for method, _, ctype, headers in rx.requests:
        assert method == "POST"
        assert ctype == "application/x-protobuf"
        assert headers.get("Host") == rx.url.removeprefix("http://")
    check_traces(only(rx.traces))
    check_metrics(only(rx.metrics))
    # Byte for byte what the encoder wrote.
    assert only(rx.traces) == produced["traces"]
    assert only(rx.metrics) == produced["metrics"]


# -- the receiver itself -----------------------------------------------------------


def post(url: str, body: bytes, ctype: str = "application/x-protobuf"):
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers.get("Content-Type"), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read()


def official_trace_request() -> trace_service_pb2.ExportTraceServiceRequest:
    span = trace_pb2.Span(
        trace_id=TRACE_ID,
        span_id=SERVER_SPAN,
        name="self-test",
        kind=trace_pb2.Span.SPAN_KIND_SERVER,
        start_time_unix_nano=T0,
        end_time_unix_nano=T0 + 1,
    )
    return trace_service_pb2.ExportTraceServiceRequest(
        resource_spans=[
            trace_pb2.ResourceSpans(
                resource=resource_pb2.Resource(
                    attributes=[
                        common_pb2.KeyValue(
                            key="service.name",
                            value=common_pb2.AnyValue(string_value="self"),
                        )
                    ]
                ),
                scope_spans=[trace_pb2.ScopeSpans(spans=[span])],
            )
        ]
    )


def test_receiver_decodes_and_answers():
    with Receiver() as rx:
        status, ctype, body = post(rx.url + "/v1/traces",
                                   official_trace_request().SerializeToString())
        assert (status, ctype) == (200, "application/x-protobuf")
        resp = trace_service_pb2.ExportTraceServiceResponse()
        resp.ParseFromString(body)
        assert not resp.HasField("partial_success")
        assert [s.name for s in rx.spans()] == ["self-test"]
        assert attrs(rx.traces[0].resource_spans[0].resource.attributes) == {
            "service.name": "self"
        }

        m = metrics_service_pb2.ExportMetricsServiceRequest(
            resource_metrics=[
                metrics_pb2.ResourceMetrics(
                    scope_metrics=[
                        metrics_pb2.ScopeMetrics(
                            metrics=[
                                metrics_pb2.Metric(
                                    name="g",
                                    gauge=metrics_pb2.Gauge(
                                        data_points=[metrics_pb2.NumberDataPoint(as_int=5)]
                                    ),
                                )
                            ]
                        )
                    ]
                )
            ]
        )
        status, _, body = post(rx.url + "/v1/metrics", m.SerializeToString())
        assert status == 200
        metrics_service_pb2.ExportMetricsServiceResponse().ParseFromString(body)
        assert [x.name for x in rx.metric_list()] == ["g"]
        assert rx.wait_for(lambda: len(rx.requests) == 2, timeout=1)


def test_receiver_rejects_what_is_not_otlp_protobuf():
    with Receiver() as rx:
        assert post(rx.url + "/v1/logs", b"")[0] == 404
        assert post(rx.url + "/v1/traces", b"{}", "application/json")[0] == 415
        assert post(rx.url + "/v1/traces", b"\xff\xff\xff")[0] == 400
        assert rx.traces == [] and len(rx.requests) == 3


def test_receiver_can_fail_on_purpose():
    with Receiver() as rx:
        rx.fail_with = 503
        status, _, _ = post(rx.url + "/v1/traces",
                            official_trace_request().SerializeToString())
        assert status == 503
        assert len(rx.spans()) == 1, "recorded all the same"
