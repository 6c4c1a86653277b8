"""Prometheus metrics of one model server: TF Serving's `:tensorflow:serving:*` series and ours.

TF Serving's series keep TF Serving's exact names, labels, buckets and text form, so that
dashboards and alerts written for TF Serving work unchanged (`util/prometheus_exporter.cc`,
`servables/tensorflow/util.cc`):

- `:tensorflow:serving:request_count{model_name,status}`: a counter written *without* the
  `_total` suffix prometheus_client would add; `status` is the canonical code name ("OK",
  "NOT_FOUND", ...);
- `:tensorflow:serving:request_latency{model_name,API,entrypoint}` and
  `:tensorflow:serving:runtime_latency{model_name,API,runtime}`: histograms in microseconds,
  buckets 10 * 1.8^i for i < 33 (TF's `Buckets::Exponential(10, 1.8, 33)`, ~25 minutes);
- `:tensorflow:serving:request_example_counts{model}` (buckets 1, 2, 4 ... 16384) and
  `:tensorflow:serving:request_example_count_total{model}`: tf.Examples per
  classify / regress / multi-inference request.

Their values live in prometheus_client metric objects (thread safe, one small lock each) that
are not registered anywhere; `exposition()` writes them in TF Serving's form, then our own
`sealserve_*` series from this instance's `CollectorRegistry` with prometheus_client's writer.
One `Metrics` per server (tests run several servers in one process).

The request path is a set lookup, a dict lookup and prometheus_client's increments: labelled
children are cached per label tuple. Model names come from requests, so an unbounded number of
names would be an unbounded number of series (memory an unauthenticated client could grow):
after `max_model_names` distinct names, further unknown names are counted as `__other__`.
Names of configured models are always admitted (`admit_models`). Thread safe.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric

from sealserve.errors import InvalidArgument

DEFAULT_PATH = "/monitoring/prometheus/metrics"  # TF Serving's PrometheusExporter::kPrometheusPath
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # Prometheus text format 0.0.4
OTHER_MODELS = "__other__"

# TF's Buckets::Exponential(10, 1.8, 33): 10 µs ... ~1.5e9 µs, then +Inf
LATENCY_BUCKETS_US = tuple(10 * 1.8**i for i in range(33))
EXAMPLE_COUNT_BUCKETS = tuple(float(2**i) for i in range(15))  # Exponential(1, 2, 15)
LOAD_SECONDS_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
BATCH_SIZE_BUCKETS = tuple(float(2**i) for i in range(13))  # 1 ... 4096

# Signature method → TF Serving's `API` label of runtime_latency (predict_util.cc etc.)
_RUNTIME_API = {
    "tensorflow/serving/predict": "Predict",
    "tensorflow/serving/classify": "Classify",
    "tensorflow/serving/regress": "Regress",
}
RUNTIME = "TF"  # TF Serving says "TF1" (sessions) or "TFRT"; OpenVINO's runs say "OpenVINO"


@dataclass(frozen=True)
class MonitoringConfig:
    """TF Serving's `MonitoringConfig.prometheus_config`: off unless enabled."""

    enable: bool = False
    path: str = DEFAULT_PATH

    def __post_init__(self) -> None:
        # A plain path: aiohttp would read `{...}` as a variable, `?` and `#` never match.
        if not re.fullmatch(r"/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*", self.path):
            raise InvalidArgument(f"monitoring path must be a plain URL path: {self.path!r}")
        # The API and health routes must keep their meaning whatever the path.
        if re.match(r"(?i)/v1/(models|health)(/|:|$)", self.path):
            raise InvalidArgument(f"monitoring path {self.path} collides with the REST API")


def read_monitoring_config(path: str) -> MonitoringConfig:
    """`--monitoring_config_file`: `prometheus_config { enable: true path: "..." }`."""
    from sealserve.serving import config_protos

    message = config_protos.read("MonitoringConfig", path, "monitoring config file")
    prometheus = message.prometheus_config
    return MonitoringConfig(enable=prometheus.enable, path=prometheus.path or DEFAULT_PATH)


class Metrics:
    def __init__(self, max_model_names: int = 1000) -> None:
        self.registry = CollectorRegistry()
        self._max_model_names = max_model_names
        self._model_names: set[str] = set()
        self._children: dict[tuple[object, ...], Any] = {}

        # TF Serving's: not registered (registry=None), written by `_tf_serving_text`
        self._request_count = Counter(
            ":tensorflow:serving:request_count",
            "The total number of requests.",
            ("model_name", "status"),
            registry=None,
        )
        self._request_latency = Histogram(
            ":tensorflow:serving:request_latency",
            "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
            ("model_name", "API", "entrypoint"),
            buckets=LATENCY_BUCKETS_US,
            registry=None,
        )
        self._runtime_latency = Histogram(
            ":tensorflow:serving:runtime_latency",
            "Distribution of wall time (in microseconds) for Tensorflow runtime.",
            ("model_name", "API", "runtime"),
            buckets=LATENCY_BUCKETS_US,
            registry=None,
        )
        self._example_counts = Histogram(
            ":tensorflow:serving:request_example_counts",
            "The number of tensorflow.Examples per request.",
            ("model",),
            buckets=EXAMPLE_COUNT_BUCKETS,
            registry=None,
        )
        self._example_count_total = Counter(
            ":tensorflow:serving:request_example_count_total",
            "The total number of tensorflow.Examples.",
            ("model",),
            registry=None,
        )
        # (exported name, metric): prometheus_client drops a counter name's `_total` suffix
        self._tf_serving = (
            (":tensorflow:serving:request_count", self._request_count),
            (":tensorflow:serving:request_latency", self._request_latency),
            (":tensorflow:serving:runtime_latency", self._runtime_latency),
            (":tensorflow:serving:request_example_counts", self._example_counts),
            (":tensorflow:serving:request_example_count_total", self._example_count_total),
        )

        # ours (prometheus_client adds `_total` to counters)
        registry = self.registry
        self._loads = Counter(
            "sealserve_model_loads",
            "Model version load attempts, by outcome (OK or the error's canonical code).",
            ("model_name", "outcome"),
            registry=registry,
        )
        self._load_seconds = Histogram(
            "sealserve_model_load_seconds",
            "Duration of model version load attempts: key, decryption, TensorFlow, warmup.",
            ("model_name",),
            buckets=LOAD_SECONDS_BUCKETS,
            registry=registry,
        )
        self._decrypted_bytes = Counter(
            "sealserve_model_decrypted_bytes",
            "Plaintext bytes of protected model files decrypted into memory.",
            ("model_name",),
            registry=registry,
        )
        self._decryption_seconds = Counter(
            "sealserve_model_decryption_seconds",
            "Time spent authenticating and decrypting protected model files into memory.",
            ("model_name",),
            registry=registry,
        )
        self._batch_size = Histogram(
            "sealserve_batch_size",
            "Requests' rows merged into each batch run by the dynamic batcher.",
            ("model_name",),
            buckets=BATCH_SIZE_BUCKETS,
            registry=registry,
        )
        self._queue_depth = Gauge(
            "sealserve_batch_queue_depth",
            "Rows waiting in the dynamic batcher's queue for a model.",
            ("model_name",),
            registry=registry,
        )

    # -- model names ---------------------------------------------------------------------

    def admit_models(self, names: Iterable[str]) -> None:
        """Configured model names: always recorded under their own name."""
        self._model_names.update(names)

    def _model(self, name: str) -> str:
        if name in self._model_names:
            return name
        # Unlocked: racing threads may overshoot the cap by a few names, which is harmless.
        if len(self._model_names) < self._max_model_names:
            self._model_names.add(name)
            return name
        return OTHER_MODELS

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:  # first use of these labels: prometheus_client's lock, once
            child = self._children[key] = metric.labels(*labels)
        return child

    # -- recording -------------------------------------------------------------------------

    def record_request(
        self, model: str, api: str, entrypoint: str, status: str, seconds: float
    ) -> None:
        """One finished request: `status` is a canonical code name ("OK", "NOT_FOUND", ...)."""
        model = self._model(model)
        self._child(self._request_count, model, status).inc()
        self._child(self._request_latency, model, api, entrypoint).observe(seconds * 1e6)

    def record_runtime(self, model: str, api: str, seconds: float, runtime: str = RUNTIME) -> None:
        """Time inside the model run (TensorFlow or OpenVINO: `runtime`), per run."""
        model = self._model(model)
        self._child(self._runtime_latency, model, api, runtime).observe(seconds * 1e6)

    def runtime_observer(self, model: str) -> Callable[[str, float, str], None]:
        """A `Servable.run_observer` for `model`: (signature method name, seconds, runtime)."""

        def observe(method: str, seconds: float, runtime: str = RUNTIME) -> None:
            self.record_runtime(model, _RUNTIME_API.get(method, "Predict"), seconds, runtime)

        return observe

    def record_examples(self, model: str, count: int) -> None:
        model = self._model(model)
        self._child(self._example_counts, model).observe(count)
        self._child(self._example_count_total, model).inc(count)

    def record_load(
        self, model: str, version: int, seconds: float, ok: bool, code: str | None = None
    ) -> None:
        """One load attempt of a version. The version is not a label: versions come and go,
        and each would leave its series behind for the life of the process."""
        outcome = "OK" if ok else (code or "UNKNOWN")
        self._loads.labels(model, outcome).inc()
        self._load_seconds.labels(model).observe(seconds)

    def record_decryption(self, model: str, plaintext_bytes: int, seconds: float) -> None:
        self._decrypted_bytes.labels(model).inc(plaintext_bytes)
        self._decryption_seconds.labels(model).inc(seconds)

    def record_batch(self, model: str, size: int) -> None:
        """One batch run by the dynamic batcher, of `size` rows."""
        self._child(self._batch_size, self._model(model)).observe(size)

    def set_queue_depth(self, model: str, depth: int) -> None:
        self._child(self._queue_depth, self._model(model)).set(depth)

    # -- exposition ------------------------------------------------------------------------

    def exposition(self) -> bytes:
        """The Prometheus text page: TF Serving's series, then ours."""
        return _tf_serving_text(self._tf_serving).encode() + generate_latest(
            _WithoutCreated(self.registry)
        )


class _WithoutCreated:
    """A registry's families without the `_created` timestamps prometheus_client adds to
    counters and histograms: the 0.0.4 text format has no place for them, and they would
    double the page with one gauge per series."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterable[Metric]:
        for family in self._registry.collect():
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family


def _tf_serving_text(metrics: Iterable[tuple[str, Any]]) -> str:
    """TF Serving's exporter output: labels in declaration order, counters under their own
    name (no `_total` added) with integer values, histograms' `_sum` before `_count`, no
    `_created` series. (`# HELP` lines are ours; TF Serving writes only `# TYPE`.)"""
    lines: list[str] = []
    for name, metric in metrics:
        for family in metric.collect():
            lines.append(f"# HELP {name} {family.documentation}")
            lines.append(f"# TYPE {name} {family.type}")
            count_line = ""
            for sample in family.samples:
                labels = dict(sample.labels)
                if sample.name.endswith("_created"):
                    continue
                if family.type == "counter":
                    sample_name, value = name, _integer(sample.value)
                else:
                    sample_name = sample.name
                    if sample_name.endswith("_sum"):
                        value = repr(float(sample.value))
                    else:
                        value = _integer(sample.value)
                    if "le" in labels:
                        labels["le"] = _bucket_limit(labels["le"])
                text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
                line = f"{sample_name}{{{text}}} {value}"
                if sample_name.endswith("_count") and family.type == "histogram":
                    count_line = line  # written after its `_sum`, as TF Serving does
                    continue
                lines.append(line)
                if count_line and sample_name.endswith("_sum"):
                    lines.append(count_line)
                    count_line = ""
    return "\n".join(lines) + "\n"


def _integer(value: float) -> str:
    return str(int(value))


def _bucket_limit(le: str) -> str:
    # TF Serving prints limits with absl's six significant digits: 10, 18, 32.4, 58.32 ...
    return le if le == "+Inf" else f"{float(le):.6g}"


def _escape(value: str) -> str:
    # Model names come from requests: escape what would let one forge lines or labels.
    return value.replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")
