"""TF Serving's gRPC API over grpc.aio: PredictionService, ModelService, grpc.health.v1.

Thin: convert the request protos, call the data plane, convert the result, and map a
`SealserveError` to its gRPC status code with TF Serving's message. Classify, Regress,
MultiInference and HandleReloadConfigRequest answer UNIMPLEMENTED until they are built.
Async safe.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tensorflow_serving.apis import (
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from sealserve.errors import Code, InvalidArgument, SealserveError
from sealserve.serving import api_protos, tensor_proto
from sealserve.serving.dataplane import DataPlane, ModelSpec

log = logging.getLogger(__name__)
T = TypeVar("T")

SERVICES = ("tensorflow.serving.PredictionService", "tensorflow.serving.ModelService")


async def _guarded(context: grpc.aio.ServicerContext, call: Callable[[], Awaitable[T]]) -> T:
    """Run a handler, turning our errors into gRPC statuses (and bugs into INTERNAL)."""
    try:
        return await call()
    except SealserveError as exc:
        await context.abort(grpc.StatusCode[exc.code.name], str(exc))
    except Exception:
        log.exception("gRPC request failed")
        await context.abort(grpc.StatusCode.INTERNAL, "internal error")
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
    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    async def Predict(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        async def predict() -> Any:
            resolved = self.dataplane.resolve(model_spec(request.model_spec))

            def work() -> Any:
                inputs = {alias: tensor_proto.to_numpy(t) for alias, t in request.inputs.items()}
                outputs = self.dataplane.predict(resolved, inputs, tuple(request.output_filter))
                response = predict_pb2.PredictResponse()
                for alias, array in outputs.items():  # typed fields, as TF Serving answers
                    tensor_proto.from_numpy(array, out=response.outputs[alias])
                response.model_spec.name = resolved.servable.name
                response.model_spec.version.value = resolved.servable.version
                response.model_spec.signature_name = resolved.signature_name
                return response

            return await self.dataplane.call(work)

        return await _guarded(context, predict)

    async def GetModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        async def metadata() -> Any:
            fields = list(request.metadata_field)
            if not fields:
                raise InvalidArgument(
                    "GetModelMetadataRequest must specify at least one metadata_field"
                )
            for field in fields:
                if field != "signature_def":
                    raise InvalidArgument(f"Metadata field {field} is not supported")
            servable = self.dataplane.servable(model_spec(request.model_spec))
            return api_protos.model_metadata_response(servable)

        return await _guarded(context, metadata)

    async def Classify(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return await _unimplemented(context, "Classify")

    async def Regress(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return await _unimplemented(context, "Regress")

    async def MultiInference(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return await _unimplemented(context, "MultiInference")


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    async def GetModelStatus(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        async def status() -> Any:
            spec = model_spec(request.model_spec)
            if spec.label is not None:
                raise InvalidArgument("Model status by version label is not supported")
            statuses = self.dataplane.status(spec.name, spec.version)
            return api_protos.model_status_response(spec.name, statuses)

        return await _guarded(context, status)

    async def HandleReloadConfigRequest(
        self,
        request: Any,  # noqa: N802
        context: grpc.aio.ServicerContext,
    ) -> Any:
        return await _unimplemented(context, "HandleReloadConfigRequest")


async def _unimplemented(context: grpc.aio.ServicerContext, method: str) -> Any:
    await context.abort(
        grpc.StatusCode.UNIMPLEMENTED, f"{method} is not supported by this server yet"
    )


async def add_services(
    server: grpc.aio.Server, dataplane: DataPlane, *, health_check: bool
) -> None:
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(dataplane), server
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(dataplane), server)
    if health_check:
        servicer = health.aio.HealthServicer()
        for service in ("", *SERVICES):
            await servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)


__all__ = ["Code", "add_services", "model_spec"]
