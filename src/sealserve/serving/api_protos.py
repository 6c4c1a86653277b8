"""TF Serving's response messages for model status and metadata, built once for both APIs.

The gRPC adapter returns these protos as they are; the REST adapter renders them as JSON the
way TF Serving does (proto3 JSON with the proto's snake_case field names, default values
printed, int64 as strings). Pure conversion; thread safe.
"""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import json_format

from sealserve.errors import SealserveError
from sealserve.serving.manager import VersionStatus
from sealserve.serving.servable import Servable


def model_status_response(name: str, statuses: list[VersionStatus]) -> Any:
    from tensorflow_serving.apis import get_model_status_pb2

    response = get_model_status_pb2.GetModelStatusResponse()
    for status in statuses:
        entry = response.model_version_status.add()
        entry.version = status.version
        entry.state = status.state.value
        entry.status.SetInParent()  # TF Serving always reports a status, OK included
        if status.error is not None:
            entry.status.error_code = _error_code(status.error)
            entry.status.error_message = str(status.error)
    return response


def model_metadata_response(servable: Servable) -> Any:
    from tensorflow_serving.apis import get_model_metadata_pb2

    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for key, signature_def in servable.signature_defs.items():
        signature_map.signature_def[key].CopyFrom(signature_def)
    response.metadata["signature_def"].Pack(signature_map)
    return response


def to_json(message: Any) -> bytes:
    """TF Serving's JSON rendering of a response proto (Any fields unpacked in place)."""
    return json.dumps(_as_dict(message), separators=(",", ":")).encode()


def metadata_json(servable: Servable) -> bytes:
    """REST metadata: the Any-wrapped SignatureDefMap appears as a plain object."""
    response = model_metadata_response(servable)
    from tensorflow_serving.apis import get_model_metadata_pb2

    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_map)
    document = {
        "model_spec": {
            "name": servable.name,
            "signature_name": "",
            "version": str(servable.version),
        },
        "metadata": {"signature_def": _as_dict(signature_map)},
    }
    return json.dumps(document, separators=(",", ":")).encode()


def _as_dict(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def _error_code(error: SealserveError) -> int:
    return error.code.value
