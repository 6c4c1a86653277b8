"""Prometheus metrics: TF Serving's `:tensorflow:serving:*` series and ours, scraped from a
real server's REST port after real REST and gRPC requests (successes and errors)."""

from __future__ import annotations

import re

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from sealserve.errors import InvalidArgument
from sealserve.serving.keys import StaticKeyProvider
from sealserve.serving.metrics import (
    CONTENT_TYPE,
    DEFAULT_PATH,
    LATENCY_BUCKETS_US,
    OTHER_MODELS,
    Metrics,
    MonitoringConfig,
    read_monitoring_config,
)
from sealserve.serving.model_config import ModelConfig
from sealserve.serving.version_policy import VersionPolicy
from tests.harness import RunningServer, server_options
from tests.serving.conftest import SECRET_KEY

PATH = "/custom/metrics"
_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)\{(.*)\} (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_]\w*)="((?:[^"\\]|\\.)*)"')

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def monitored(model_root):
    models = [
        ModelConfig("half_plus_two", str(model_root / "half_plus_two"), VersionPolicy(kind="all")),
        ModelConfig("secret_h2", str(model_root / "secret_h2")),
        ModelConfig("wrong_key", str(model_root / "secret_h2")),  # its only version fails
    ]
    keys = StaticKeyProvider({"secret_h2": SECRET_KEY, "wrong_key": bytes(16)})
    # wrong_key fails on purpose: the server stays up to count it
    options = server_options(
        models, monitoring=MonitoringConfig(enable=True, path=PATH), allow_unavailable_models=True
    )
    running = RunningServer(options, keys)
    yield running
    running.stop()


def scrape(server: RunningServer) -> Series:
    """Every sample line, by exact name and labels in the order written."""
    result = server.http("GET", PATH)
    assert result.status == 200
    assert result.content_type == CONTENT_TYPE
    assert CONTENT_TYPE.startswith("text/plain; version=0.0.4")
    text = result.body.decode()
    list(text_string_to_metric_families(text))  # the whole page is valid exposition text
    series: Series = {}
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        match = _LINE.match(line)
        assert match, line
        name, labels, value = match.groups()
        series[(name, tuple(_LABEL.findall(labels)))] = float(value)
    return series


def value(series: Series, name: str, **labels: str) -> float:
    return series.get((name, tuple(labels.items())), 0.0)


def grpc_predict(server, model: str, x) -> grpc.StatusCode:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["x"].dtype = 1  # DT_FLOAT
    request.inputs["x"].tensor_shape.dim.add().size = len(x)
    request.inputs["x"].float_val.extend(x)
    with server.channel() as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        try:
            stub.Predict(request, timeout=30)
        except grpc.RpcError as error:
            return error.code()
    return grpc.StatusCode.OK


def test_rest_requests_are_counted_and_timed(monitored):
    before = scrape(monitored)
    ok = monitored.http("POST", "/v1/models/half_plus_two:predict", {"instances": [1.0, 2.0]})
    assert ok.status == 200
    assert monitored.http("POST", "/v1/models/nope:predict", {"instances": [1.0]}).status == 404
    bad = monitored.http("POST", "/v1/models/half_plus_two:predict", {"instances": ["one"]})
    assert bad.status == 400
    assert monitored.http("GET", "/v1/models/half_plus_two").status == 200
    after = scrape(monitored)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    count = ":tensorflow:serving:request_count"
    assert delta(count, model_name="half_plus_two", status="OK") == 2  # predict, status
    assert delta(count, model_name="half_plus_two", status="INVALID_ARGUMENT") == 1
    assert delta(count, model_name="nope", status="NOT_FOUND") == 1
    latency = ":tensorflow:serving:request_latency"
    rest_predict = dict(model_name="half_plus_two", API="predict", entrypoint="REST")
    assert delta(f"{latency}_count", **rest_predict) == 2
    assert delta(f"{latency}_bucket", **rest_predict, le="+Inf") == 2
    assert delta(f"{latency}_sum", **rest_predict) > 0  # microseconds
    assert delta(f"{latency}_count", model_name="nope", API="predict", entrypoint="REST") == 1
    status_api = dict(model_name="half_plus_two", API="get_model_status", entrypoint="REST")
    assert delta(f"{latency}_count", **status_api) == 1
    # the model ran once (the bad request failed before running it)
    runtime = dict(model_name="half_plus_two", API="Predict", runtime="TF")
    assert delta(":tensorflow:serving:runtime_latency_count", **runtime) == 1


def test_grpc_requests_are_counted_and_timed(monitored):
    before = scrape(monitored)
    assert grpc_predict(monitored, "secret_h2", [1.0, 2.0]) == grpc.StatusCode.OK
    assert grpc_predict(monitored, "nope", [1.0]) == grpc.StatusCode.NOT_FOUND
    with monitored.channel() as channel:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "secret_h2"
        model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=30)
    after = scrape(monitored)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    count = ":tensorflow:serving:request_count"
    assert delta(count, model_name="secret_h2", status="OK") == 2
    assert delta(count, model_name="nope", status="NOT_FOUND") == 1
    latency = ":tensorflow:serving:request_latency_count"
    assert delta(latency, model_name="secret_h2", API="Predict", entrypoint="GRPC") == 1
    assert delta(latency, model_name="secret_h2", API="GetModelStatus", entrypoint="GRPC") == 1
    assert delta(latency, model_name="nope", API="Predict", entrypoint="GRPC") == 1
    runtime = ":tensorflow:serving:runtime_latency_count"
    assert delta(runtime, model_name="secret_h2", API="Predict", runtime="TF") == 1


def test_examples_are_counted_for_classify_and_regress(monitored):
    before = scrape(monitored)
    body = {"signature_name": "regress_x_to_y", "examples": [{"x": 80.0}, {"x": 1.0}]}
    assert monitored.http("POST", "/v1/models/half_plus_two:regress", body).status == 200
    after = scrape(monitored)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    model = "half_plus_two"
    assert delta(":tensorflow:serving:request_example_count_total", model=model) == 2
    assert delta(":tensorflow:serving:request_example_counts_bucket", model=model, le="2") == 1
    runtime = dict(model_name=model, API="Regress", runtime="TF")
    assert delta(":tensorflow:serving:runtime_latency_count", **runtime) == 1


def test_tf_serving_text_form(monitored):
    """Counters under their own name (no `_total`), integer counts, TF Serving's buckets."""
    monitored.http("POST", "/v1/models/half_plus_two:predict", {"instances": [1.0]})
    text = monitored.http("GET", PATH).body.decode()
    assert re.search(
        r'^:tensorflow:serving:request_count\{model_name="half_plus_two",status="OK"\} \d+$',
        text,
        re.M,
    )
    assert "# TYPE :tensorflow:serving:request_count counter" in text
    assert "# TYPE :tensorflow:serving:request_latency histogram" in text
    assert ":tensorflow:serving:request_count_total" not in text and "_created" not in text
    prefix = (
        ':tensorflow:serving:request_latency_bucket{model_name="half_plus_two",API="predict",'
        'entrypoint="REST",le='
    )
    limits = re.findall(re.escape(prefix) + r'"([^"]+)"\}', text)
    assert limits[:4] == ["10", "18", "32.4", "58.32"] and limits[-1] == "+Inf"
    assert len(limits) == len(LATENCY_BUCKETS_US) + 1


def test_load_and_decryption_metrics(monitored):
    series = scrape(monitored)
    loads = "sealserve_model_loads_total"
    assert value(series, loads, model_name="half_plus_two", outcome="OK") == 2  # versions 1, 2
    assert value(series, loads, model_name="secret_h2", outcome="OK") == 1
    assert value(series, loads, model_name="wrong_key", outcome="DATA_LOSS") == 1
    assert value(series, "sealserve_model_load_seconds_count", model_name="secret_h2") == 1
    assert value(series, "sealserve_model_decrypted_bytes_total", model_name="secret_h2") > 0
    assert value(series, "sealserve_model_decryption_seconds_total", model_name="secret_h2") > 0
    assert value(series, "sealserve_model_decrypted_bytes_total", model_name="half_plus_two") == 0


def test_model_names_cannot_forge_lines(monitored):
    # a model name is any string over gRPC: quotes and newlines are escaped in the label
    forged = 'a"b\nc"} 1\n:tensorflow:serving:request_count{model_name="x'
    assert grpc_predict(monitored, forged, [1.0]) == grpc.StatusCode.NOT_FOUND
    text = monitored.http("GET", PATH).body.decode()
    escaped = r"a\"b\nc\"} 1\n:tensorflow:serving:request_count{model_name=\"x"
    assert f'request_count{{model_name="{escaped}",status="NOT_FOUND"}} 1\n' in text
    assert 'request_count{model_name="x",' not in text
    assert scrape(monitored)  # every line still matches the format


def test_only_the_configured_path_serves_metrics(monitored, server):
    assert monitored.http("GET", DEFAULT_PATH).status in (400, 404)
    assert server.http("GET", DEFAULT_PATH).status in (400, 404)  # monitoring disabled


# -- units ---------------------------------------------------------------------------------


def test_batch_hooks_and_model_name_cap():
    metrics = Metrics(max_model_names=2)
    metrics.admit_models(["m"])
    for model in ("m", "x", "y", "z"):
        metrics.record_request(model, "Predict", "GRPC", "NOT_FOUND", 0.001)
    metrics.record_batch("m", 8)
    metrics.set_queue_depth("m", 3)
    text = metrics.exposition().decode()
    count = ":tensorflow:serving:request_count"
    assert f'{count}{{model_name="m",status="NOT_FOUND"}} 1' in text
    assert f'{count}{{model_name="x",status="NOT_FOUND"}} 1' in text
    assert f'{count}{{model_name="{OTHER_MODELS}",status="NOT_FOUND"}} 2' in text
    assert 'sealserve_batch_size_count{model_name="m"} 1.0' in text
    assert 'sealserve_batch_queue_depth{model_name="m"} 3.0' in text


def test_monitoring_config_file(tmp_path):
    path = tmp_path / "monitoring.config"
    path.write_text('prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }')
    assert read_monitoring_config(str(path)) == MonitoringConfig(True, DEFAULT_PATH)
    path.write_text("prometheus_config { enable: true }")
    assert read_monitoring_config(str(path)) == MonitoringConfig(True, DEFAULT_PATH)
    path.write_text("")
    assert read_monitoring_config(str(path)).enable is False
    path.write_text("prometheus_config { enabled: true }")
    with pytest.raises(InvalidArgument):
        read_monitoring_config(str(path))


@pytest.mark.parametrize("bad", ["metrics", "/v1/models/x", "/v1/health/ready", "/m/{x}", "/m?a"])
def test_monitoring_paths_that_would_collide_or_not_match(bad):
    with pytest.raises(InvalidArgument):
        MonitoringConfig(enable=True, path=bad)


def test_cli_reads_the_monitoring_config_file(tmp_path, model_root):
    from sealserve.cli import _server_options, build_parser
    from sealserve.serving.keys import StaticKeyProvider as Keys

    path = tmp_path / "monitoring.config"
    path.write_text('prometheus_config { enable: true path: "/m" }')
    args = build_parser().parse_args(
        [
            "serve",
            "--model_base_path",
            str(model_root / "half_plus_two"),
            "--rest_api_port",
            "8501",
            "--monitoring_config_file",
            str(path),
        ]
    )
    assert _server_options(args, Keys({})).monitoring == MonitoringConfig(True, "/m")


def test_cached_label_children_accumulate():
    metrics = Metrics()
    for _ in range(1000):
        metrics.record_request("m", "Predict", "GRPC", "OK", 0.001)
    text = metrics.exposition().decode()
    assert 'request_latency_count{model_name="m",API="Predict",entrypoint="GRPC"} 1000' in text
    assert '_sum{model_name="m",API="Predict",entrypoint="GRPC"} 1000000.0' in text  # µs
