"""A loaded model version: its signatures as plain values, and running them on numpy.

Built by the loader from a `tf.saved_model.load` object and the SavedModel's own
`SignatureDef`s (what TF Serving's metadata API returns). `run` is thread safe: TensorFlow
functions may be called from several threads at once, and do their work without the GIL.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from sealserve.errors import FailedPrecondition, InvalidArgument, SealserveError
from sealserve.serving.signatures import SignatureInfo, TensorInfo
from sealserve.serving.tensorflow_runtime import import_tensorflow

log = logging.getLogger(__name__)

_NUMPY_KINDS = {
    "DT_FLOAT": np.float32,
    "DT_DOUBLE": np.float64,
    "DT_HALF": np.float16,
    "DT_INT8": np.int8,
    "DT_INT16": np.int16,
    "DT_INT32": np.int32,
    "DT_INT64": np.int64,
    "DT_UINT8": np.uint8,
    "DT_UINT16": np.uint16,
    "DT_UINT32": np.uint32,
    "DT_UINT64": np.uint64,
    "DT_BOOL": np.bool_,
    "DT_COMPLEX64": np.complex64,
    "DT_COMPLEX128": np.complex128,
}
# TensorFlow's names for dtypes in its error messages ("Expects arg[0] to be float ...")
_TF_TYPE_NAMES = {
    "DT_FLOAT": "float",
    "DT_DOUBLE": "double",
    "DT_HALF": "half",
    "DT_INT8": "int8",
    "DT_INT16": "int16",
    "DT_INT32": "int32",
    "DT_INT64": "int64",
    "DT_UINT8": "uint8",
    "DT_UINT16": "uint16",
    "DT_UINT32": "uint32",
    "DT_UINT64": "uint64",
    "DT_BOOL": "bool",
    "DT_STRING": "string",
    "DT_COMPLEX64": "complex64",
    "DT_COMPLEX128": "complex128",
}


def signature_infos(signature_defs: dict[str, Any]) -> dict[str, SignatureInfo]:
    """SignatureInfo values from `SignatureDef` protos."""
    from tensorflow.core.framework import types_pb2

    def tensor(info: Any) -> TensorInfo:
        shape = None
        if not info.tensor_shape.unknown_rank:
            shape = tuple(int(d.size) for d in info.tensor_shape.dim)
        return TensorInfo(name=info.name, dtype=types_pb2.DataType.Name(info.dtype), shape=shape)

    return {
        key: SignatureInfo(
            inputs={a: tensor(i) for a, i in sorted(sig.inputs.items())},
            outputs={a: tensor(o) for a, o in sorted(sig.outputs.items())},
            method_name=sig.method_name,
        )
        for key, sig in signature_defs.items()
    }


def dtype_of(array: np.ndarray) -> str:
    """The DataType name of a numpy array (object arrays of bytes are DT_STRING)."""
    if array.dtype == object or array.dtype.kind in "SU":
        return "DT_STRING"
    for name, kind in _NUMPY_KINDS.items():
        if array.dtype == kind:
            return name
    raise InvalidArgument(f"unsupported input dtype {array.dtype}")


class Servable:
    """One loaded version of one model."""

    def __init__(self, name: str, version: int, loaded: Any, signature_defs: dict[str, Any]):
        self.name = name
        self.version = version
        self._loaded = loaded  # keeps the variables alive
        self.signature_defs = signature_defs  # SignatureDef protos, for the metadata API
        self.signatures = signature_infos(signature_defs)
        self._functions = {
            key: fn for key, fn in loaded.signatures.items() if key in self.signatures
        }

    def signature(self, key: str) -> SignatureInfo:
        try:
            return self.signatures[key]
        except KeyError:
            raise FailedPrecondition(f'Serving signature key "{key}" not found.') from None

    def run(
        self, key: str, inputs: dict[str, np.ndarray], output_filter: Sequence[str] = ()
    ) -> dict[str, np.ndarray]:
        """Run signature `key`; inputs must be exactly its inputs, with its dtypes."""
        signature = self.signature(key)
        if key not in self._functions:
            raise FailedPrecondition(f'Serving signature key "{key}" cannot be run.')
        check_inputs(signature, inputs)
        for alias in output_filter:
            if alias not in signature.outputs:
                raise InvalidArgument(
                    f"output tensor alias not found in signature: {alias} Outputs expected to "
                    f"be in the set {{{','.join(signature.outputs)}}}."
                )
        tf = import_tensorflow()
        try:
            results = self._functions[key](**inputs)
        except (TypeError, ValueError, tf.errors.InvalidArgumentError) as exc:
            raise InvalidArgument(_first_line(exc)) from None
        except tf.errors.OpError as exc:
            raise SealserveError(_first_line(exc)) from None
        wanted = output_filter or signature.outputs
        return {alias: _to_numpy(results[alias]) for alias in wanted}


def check_inputs(signature: SignatureInfo, inputs: dict[str, np.ndarray]) -> None:
    """TF Serving's checks before a run: exactly the signature's inputs, right dtypes."""
    expected, sent = set(signature.inputs), set(inputs)
    if expected != sent:
        raise InvalidArgument(
            f"input size does not match signature: {len(sent)}!={len(expected)} "
            f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(expected))}}}). "
            f"Sent extra: {{{','.join(sorted(sent - expected))}}}. "
            f"Missing but required: {{{','.join(sorted(expected - sent))}}}."
        )
    for position, (alias, info) in enumerate(signature.inputs.items()):
        got = dtype_of(inputs[alias])
        if got != info.dtype:
            raise InvalidArgument(
                f"Expects arg[{position}] to be {_TF_TYPE_NAMES.get(info.dtype, info.dtype)} "
                f"but {_TF_TYPE_NAMES.get(got, got)} is provided"
            )


def _to_numpy(tensor: Any) -> np.ndarray:
    value = tensor.numpy() if hasattr(tensor, "numpy") else np.asarray(tensor)
    return np.asarray(value)


def _first_line(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__
