"""TF Serving's gRPC API: PredictionService, ModelService, grpc.health.v1.

HandleReloadConfigRequest is refused unless `ModelManagementPolicy` allows the caller (by
its verified client certificate) and every base path it names.

Thin: convert the request protos, call the data plane, convert the result, and map a
`SealserveError` to its gRPC status code with TF Serving's message. With metrics, every
PredictionService and GetModelStatus call is counted with its final status and timed, with
entrypoint "GRPC" and API the RPC's name ("Predict", "Classify", "Regress" as TF Serving).
The health service is returned to the server, which keeps it in step with readiness.

The handlers are synchronous, for grpc's thread-pool server (as TF Serving's C++ server):
each RPC decodes, runs and encodes in a handler thread, except a Predict of a quick
signature with small inputs, which grpc's poller thread answers itself as soon as its
message has arrived (`grpc_inline`; `place_predict` decides): for half_plus_two the two
hand-offs to a handler thread and back cost more CPU than the whole request. grpc.aio
measured slower still here (350 µs of CPU per call against 260 µs for the thread-pool
server with a fixed answer). Thread safe.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tensorflow_serving.apis import (
    classification_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from sealserve.errors import Code, InvalidArgument, PermissionDenied, SealserveError
from sealserve.serving import api_protos, grpc_inline, model_config, tensor_proto
from sealserve.serving.dataplane import DataPlane, ModelSpec, Resolved
from sealserve.serving.grpc_delivery import SEND_TIMEOUT_SECONDS, Deliveries
from sealserve.serving.handler_pool import HandlerPool
from sealserve.serving.inference import examples_from_input
from sealserve.serving.metrics import Metrics
from sealserve.serving.model_management import NOT_ALLOWED, ModelManagementPolicy
from sealserve.serving.request_budget import RequestBudget, Reservation, ResourceExhausted
from sealserve.serving.signatures import CLASSIFY_METHOD, REGRESS_METHOD, check_aliases

log = logging.getLogger(__name__)
T = TypeVar("T")

SERVICES = ("tensorflow.serving.PredictionService", "tensorflow.serving.ModelService")
# framing of a PredictResponse around its values: model spec, map entries, dtype and shape
RESPONSE_OVERHEAD_BYTES = 256
TENSOR_OVERHEAD_BYTES = 64
# a quick signature's Predict is answered in grpc's poller thread up to this many bytes on
# the wire (decoding them must not hold up the other calls for long; see `grpc_inline`)
INLINE_REQUEST_BYTES = 64 << 10


def _guarded(
    context: grpc.ServicerContext,
    call: Callable[[], T],
    metrics: Metrics | None = None,
    model: str = "",
    api: str = "",
) -> T:
    """Run a handler, turning our errors into gRPC statuses (and bugs into INTERNAL), and
    record the request's final status and latency."""
    started = time.perf_counter()
    status = Code.CANCELLED.name  # if grpc cancels us: the client went away or timed out
    try:
        result = call()
        status = "OK"
        return result
    except SealserveError as exc:
        status = exc.code.name
        context.abort(grpc.StatusCode[exc.code.name], str(exc))
    except Exception:
        status = Code.INTERNAL.name
        log.exception("gRPC request failed")
        context.abort(grpc.StatusCode.INTERNAL, "internal error")
    finally:
        if metrics is not None:
            metrics.record_request(model, api, "GRPC", status, time.perf_counter() - started)
    raise AssertionError("unreachable")  # abort() raises


def model_spec(proto: Any) -> ModelSpec:
    which = proto.WhichOneof("version_choice")
    return ModelSpec(
        name=proto.name,
        version=proto.version.value if which == "version" else None,
        label=proto.version_label if which == "version_label" else None,
        signature_name=proto.signature_name,
    )


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(
        self,
        dataplane: DataPlane,
        metrics: Metrics | None = None,
        budget: RequestBudget | None = None,
        max_response_bytes: int = 1 << 31,
        batch_wait: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext,
        deliveries: Deliveries | None = None,
    ) -> None:
        self.dataplane = dataplane
        self.metrics = metrics
        self.budget = budget if budget is not None else RequestBudget()
        self.max_response_bytes = max_response_bytes
        self.batch_wait = batch_wait  # around a handler thread's wait for its batch
        # large answers stay in the budget until their client has taken them
        self.deliveries = deliveries if deliveries is not None else Deliveries(SEND_TIMEOUT_SECONDS)

    def _examples_budget(self, request: Any) -> Any:
        """A reservation for a Classify/Regress/MultiInference request: the message, and the
        serialized examples made from it (about as large again)."""
        return self.budget.reserve(2 * request.ByteSize())

    def _deliver(self, context: Any, reservation: Reservation, response: Any) -> Any:
        """`response`, charged to `reservation` and held until its client has taken it."""
        size = response.ByteSize()
        reservation.grow(size)
        self.deliveries.hold(context, reservation, size)
        return response

    def _examples(self, model: str, request_input: Any) -> list[bytes]:
        serialized = examples_from_input(request_input)
        if self.metrics is not None:
            self.metrics.record_examples(model, len(serialized))
        return serialized

    def Predict(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return self._predict(request, context, may_wait=True)

    def place_predict(self, request: Any) -> tuple[Callable[[Any, Any], Any], bool]:
        """How to answer this Predict (`grpc_inline`): the behaviour, and whether grpc's
        poller thread runs it: only a quick signature's request of at most
        `INLINE_REQUEST_BYTES` on the wire (or one already known to fail: its error is as
        quick), never waiting for a batch. The version is resolved once, here, and the
        behaviour runs on it wherever it runs."""
        try:
            resolved = self.dataplane.resolve(model_spec(request.model_spec))
        except SealserveError:
            return functools.partial(self._predict, may_wait=False), True
        here = (
            resolved.servable.quick(resolved.signature_name)
            and request.ByteSize() <= INLINE_REQUEST_BYTES
        )
        return functools.partial(self._predict, may_wait=not here, resolved=resolved), here

    def _predict(
        self,
        request: Any,
        context: grpc.ServicerContext,
        may_wait: bool,
        resolved: Resolved | None = None,
    ) -> Any:
        """`resolved`: the version and signature, if already resolved (released here)."""

        def predict() -> Any:
            with resolved or self.dataplane.resolve(model_spec(request.model_spec)) as held:
                return run(held)

        def run(resolved: Resolved) -> Any:
            protos = request.inputs
            # aliases, then each tensor's declared size against its bytes on the wire, then
            # the budget: all before anything is decoded
            check_aliases(resolved.signature, protos)
            # each read of tensor_content is a fresh copy (see tensor_proto.to_numpy): once
            contents = {alias: t.tensor_content for alias, t in protos.items()}
            sizes = {
                alias: tensor_proto.decoded_bytes(t, content=contents[alias])
                for alias, t in protos.items()
            }
            with self.budget.reserve(request.ByteSize() + sum(sizes.values())) as reservation:
                inputs = {
                    alias: tensor_proto.to_numpy(t, size=sizes[alias], content=contents[alias])
                    for alias, t in protos.items()
                }
                outputs = self.dataplane.predict_blocking(
                    resolved, inputs, tuple(request.output_filter), self.batch_wait, may_wait
                )
                estimate = RESPONSE_OVERHEAD_BYTES + sum(
                    TENSOR_OVERHEAD_BYTES + tensor_proto.encoded_bytes_estimate(array)
                    for array in outputs.values()
                )
                if estimate > self.max_response_bytes:
                    raise ResourceExhausted(
                        f"response of about {estimate} bytes exceeds the "
                        f"{self.max_response_bytes}-byte message limit"
                    )
                reservation.grow(estimate)
                response = predict_pb2.PredictResponse()
                for alias, array in outputs.items():  # typed fields, as TF Serving answers
                    tensor_proto.from_numpy(array, out=response.outputs[alias])
                _fill_spec(response.model_spec, resolved)
                self.deliveries.hold(context, reservation, estimate)
                return response

        return _guarded(context, predict, self.metrics, request.model_spec.name, "Predict")

    def GetModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        def metadata() -> Any:
            fields = list(request.metadata_field)
            if not fields:
                raise InvalidArgument(
                    "GetModelMetadataRequest must specify at least one metadata_field"
                )
            for field in fields:
                if field != "signature_def":
                    raise InvalidArgument(f"Metadata field {field} is not supported")
            with self.dataplane.handle(model_spec(request.model_spec)) as handle:
                return api_protos.model_metadata_response(handle.servable)

        return _guarded(
            context, metadata, self.metrics, request.model_spec.name, "GetModelMetadata"
        )

    def Classify(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        def classify() -> Any:
            with (
                self.dataplane.resolve(model_spec(request.model_spec)) as resolved,
                self._examples_budget(request) as reservation,
            ):
                return self._deliver(context, reservation, work(resolved))

        def work(resolved: Any) -> Any:
            examples = self._examples(request.model_spec.name, request.input)
            rows = self.dataplane.classify(resolved, examples)
            response = classification_pb2.ClassificationResponse()
            _fill_spec(response.model_spec, resolved)
            _fill_classifications(response.result, rows)
            return response

        return _guarded(context, classify, self.metrics, request.model_spec.name, "Classify")

    def Regress(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        def regress() -> Any:
            with (
                self.dataplane.resolve(model_spec(request.model_spec)) as resolved,
                self._examples_budget(request) as reservation,
            ):
                return self._deliver(context, reservation, work(resolved))

        def work(resolved: Any) -> Any:
            examples = self._examples(request.model_spec.name, request.input)
            values = self.dataplane.regress(resolved, examples)
            response = regression_pb2.RegressionResponse()
            _fill_spec(response.model_spec, resolved)
            response.result.regressions.extend(regression_pb2.Regression(value=v) for v in values)
            return response

        return _guarded(context, regress, self.metrics, request.model_spec.name, "Regress")

    def MultiInference(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        def multi() -> Any:
            if not request.tasks:
                raise InvalidArgument("Inference request must contain at least one task")
            names = {task.model_spec.name for task in request.tasks}
            if len(names) != 1:
                raise InvalidArgument(
                    "All ModelSpecs in a MultiInferenceRequest must access the same model name."
                )
            with contextlib.ExitStack() as held:
                reservation = held.enter_context(self._examples_budget(request))
                tasks = [
                    (
                        held.enter_context(self.dataplane.resolve(model_spec(t.model_spec))),
                        t.method_name,
                    )
                    for t in request.tasks
                ]
                return self._deliver(context, reservation, work(tasks))

        def work(tasks: list[tuple[Any, str]]) -> Any:
            serialized = self._examples(request.tasks[0].model_spec.name, request.input)
            response = inference_pb2.MultiInferenceResponse()
            for resolved, method in tasks:
                result = response.results.add()
                _fill_spec(result.model_spec, resolved)
                if method == CLASSIFY_METHOD:
                    rows = self.dataplane.classify(resolved, serialized)
                    _fill_classifications(result.classification_result, rows)
                elif method == REGRESS_METHOD:
                    values = self.dataplane.regress(resolved, serialized)
                    result.regression_result.regressions.extend(
                        regression_pb2.Regression(value=v) for v in values
                    )
                else:
                    raise InvalidArgument(f"Unsupported signature method_name: {method}")
            return response

        model = request.tasks[0].model_spec.name if request.tasks else ""
        return _guarded(context, multi, self.metrics, model, "MultiInference")


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(
        self,
        dataplane: DataPlane,
        metrics: Metrics | None = None,
        management: ModelManagementPolicy | None = None,
    ) -> None:
        self.dataplane = dataplane
        self.metrics = metrics
        self.management = management or ModelManagementPolicy()  # default: refuse reloads

    def GetModelStatus(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        def status() -> Any:
            spec = model_spec(request.model_spec)
            if spec.label is not None:
                raise InvalidArgument("Model status by version label is not supported")
            statuses = self.dataplane.status(spec.name, spec.version)
            return api_protos.model_status_response(spec.name, statuses)

        return _guarded(context, status, self.metrics, request.model_spec.name, "GetModelStatus")

    def HandleReloadConfigRequest(  # noqa: N802
        self, request: Any, context: grpc.ServicerContext
    ) -> Any:
        def reload() -> Any:
            # who asks is checked before the request is even parsed (a non-admin learns
            # nothing from it), and the base paths before anything looks at the file system
            client = _client_certificate(context)
            if not (self.management.insecure_any_client or self.management.is_admin(client)):
                raise PermissionDenied(NOT_ALLOWED)
            configs = model_config.from_proto(request.config, "ReloadConfigRequest")
            self.management.authorize(client, ((c.name, c.base_path) for c in configs))
            self.dataplane.reload(configs)
            return model_management_pb2.ReloadConfigResponse()  # status OK

        return _guarded(context, reload)


def _client_certificate(context: grpc.ServicerContext) -> bytes | None:
    """The client certificate (DER) the mTLS handshake verified, if any."""
    pems = context.auth_context().get("x509_pem_cert")
    if not pems:
        return None
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    try:
        return x509.load_pem_x509_certificate(pems[0]).public_bytes(Encoding.DER)
    except ValueError:
        return None


def _fill_spec(spec: Any, resolved: Any) -> None:
    spec.name = resolved.servable.name
    spec.version.value = resolved.servable.version
    spec.signature_name = resolved.signature_name


def _fill_classifications(result: Any, rows: list[list[tuple[str, float]]]) -> None:
    for row in rows:
        classifications = result.classifications.add()
        for label, score in row:
            classifications.classes.add(label=label, score=score)


def add_services(
    server: grpc.Server,
    dataplane: DataPlane,
    handler_pool: HandlerPool,
    *,
    health_check: bool,
    metrics: Metrics | None = None,
    management: ModelManagementPolicy | None = None,
    budget: RequestBudget | None = None,
    max_response_bytes: int = 1 << 31,
    deliveries: Deliveries | None = None,
) -> health.HealthServicer | None:
    """Add TF Serving's services (and grpc.health.v1 if asked, returned so that the caller
    keeps it in step with readiness: see `set_health`). `handler_pool`: the server's
    executor, which takes a call only once its request message has arrived
    (`grpc_inline.message_first`); quick Predict calls are answered in grpc's poller thread
    instead (`grpc_inline`), and a handler thread waits for its batch inside its
    `waiting()`. `deliveries`: where large answers wait for their clients."""
    prediction = PredictionService(
        dataplane, metrics, budget, max_response_bytes, handler_pool.waiting, deliveries
    )
    # an instance attribute: the behaviour grpc's generated registration picks up
    prediction.Predict = grpc_inline.inline_when(  # type: ignore[method-assign,assignment]
        prediction.Predict, handler_pool, prediction.place_predict
    )
    registry = grpc_inline.MessageFirstRegistry(server, handler_pool)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(prediction, registry)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(
        ModelService(dataplane, metrics, management), registry
    )
    if not health_check:
        return None
    servicer = health.HealthServicer()
    set_health(servicer, dataplane.ready())
    health_pb2_grpc.add_HealthServicer_to_server(servicer, registry)
    return servicer


def set_health(servicer: health.HealthServicer, ready: bool) -> None:
    """The server ("") and each of TF Serving's services: SERVING only while ready."""
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if ready
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for service in ("", *SERVICES):
        servicer.set(service, status)


__all__ = ["Code", "add_services", "model_spec", "set_health"]
