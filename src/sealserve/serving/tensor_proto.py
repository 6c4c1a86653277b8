"""TensorFlow's `TensorProto` <-> numpy arrays, and the DataType <-> numpy dtype mapping.

Owns the gRPC tensor codec: `to_numpy` decodes a request tensor exactly as TensorFlow's C++
`Tensor::FromProto` does (which is what TF Serving runs on every Predict input), `from_numpy`
encodes a response tensor as TF Serving does (`Tensor::AsProtoField`, its default
`PredictResponseTensorSerializationOption::kAsProtoField`), or as `tensor_content` on request.

TensorFlow semantics kept on purpose (checked against `tf.io.parse_tensor`, which runs the same
C++ code, in the tests):
- a non-empty `tensor_content` wins over the typed `*_val` fields; its size must be exact.
- typed fields: no values -> zeros (b"" for strings); fewer values than elements -> the rest is
  filled with the last value (the one-value broadcast is the common case); more -> the extra
  values are ignored.
- `int_val` / `half_val` are narrowed with C casts (300 in an int_val of a DT_UINT8 tensor is
  44), as TensorFlow does.
- `unknown_rank` is ignored for a concrete tensor (TensorShape::IsValid allows it); negative
  sizes, more than 254 dimensions and element counts that overflow int64 are invalid.
- DT_BOOL `tensor_content` bytes must be 0 or 1.

Import cost: this module imports numpy only. `tensorflow.core.framework.tensor_pb2` is imported
lazily by `from_numpy` when no `out` message is given, because importing any
`tensorflow.core.*` module executes `tensorflow/__init__.py`, i.e. all of TensorFlow (seconds).
DataType numbers are the stable wire values of `types.proto`, kept here as constants.

Arrays decoded from `tensor_content` are zero-copy, read-only views of the proto's bytes.
Everything here is stateless and thread safe.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from sealserve.errors import Code, InvalidArgument, SealserveError

if TYPE_CHECKING:
    from tensorflow.core.framework.tensor_pb2 import TensorProto

_ml_dtypes: Any
try:  # bfloat16 for numpy; ships with TensorFlow, optional here
    import ml_dtypes as _ml_dtypes
except ImportError:  # pragma: no cover - ml_dtypes comes with tensorflow
    _ml_dtypes = None

__all__ = [
    "DATA_TYPES",
    "DEFAULT_MAX_BYTES",
    "DTYPE_NAMES",
    "MAX_DIMS",
    "data_type_enum",
    "data_type_name",
    "data_type_string",
    "dtype_name",
    "from_numpy",
    "numpy_dtype",
    "to_numpy",
]

# tensorflow/core/framework/types.proto, DataType (wire values; *_REF types are value + 100).
DATA_TYPES: Mapping[str, int] = MappingProxyType(
    {
        "DT_INVALID": 0,
        "DT_FLOAT": 1,
        "DT_DOUBLE": 2,
        "DT_INT32": 3,
        "DT_UINT8": 4,
        "DT_INT16": 5,
        "DT_INT8": 6,
        "DT_STRING": 7,
        "DT_COMPLEX64": 8,
        "DT_INT64": 9,
        "DT_BOOL": 10,
        "DT_QINT8": 11,
        "DT_QUINT8": 12,
        "DT_QINT32": 13,
        "DT_BFLOAT16": 14,
        "DT_QINT16": 15,
        "DT_QUINT16": 16,
        "DT_UINT16": 17,
        "DT_COMPLEX128": 18,
        "DT_HALF": 19,
        "DT_RESOURCE": 20,
        "DT_VARIANT": 21,
        "DT_UINT32": 22,
        "DT_UINT64": 23,
        "DT_FLOAT8_E5M2": 24,
        "DT_FLOAT8_E4M3FN": 25,
        "DT_FLOAT8_E4M3FNUZ": 26,
        "DT_FLOAT8_E4M3B11FNUZ": 27,
        "DT_FLOAT8_E5M2FNUZ": 28,
        "DT_INT4": 29,
        "DT_UINT4": 30,
        "DT_INT2": 31,
        "DT_UINT2": 32,
        "DT_FLOAT4_E2M1FN": 33,
    }
)
_NAME_BY_ENUM = {number: name for name, number in DATA_TYPES.items()}

# TensorFlow's DataTypeString() (C++), used verbatim in TF Serving's error messages.
_TF_TYPE_STRINGS = {
    "DT_INVALID": "INVALID",
    "DT_FLOAT": "float",
    "DT_DOUBLE": "double",
    "DT_INT32": "int32",
    "DT_UINT8": "uint8",
    "DT_INT16": "int16",
    "DT_INT8": "int8",
    "DT_STRING": "string",
    "DT_COMPLEX64": "complex64",
    "DT_INT64": "int64",
    "DT_BOOL": "bool",
    "DT_QINT8": "qint8",
    "DT_QUINT8": "quint8",
    "DT_QINT32": "qint32",
    "DT_BFLOAT16": "bfloat16",
    "DT_QINT16": "qint16",
    "DT_QUINT16": "quint16",
    "DT_UINT16": "uint16",
    "DT_COMPLEX128": "complex128",
    "DT_HALF": "half",
    "DT_RESOURCE": "resource",
    "DT_VARIANT": "variant",
    "DT_UINT32": "uint32",
    "DT_UINT64": "uint64",
}

_dtypes: dict[str, np.dtype[Any]] = {
    "DT_FLOAT": np.dtype(np.float32),
    "DT_DOUBLE": np.dtype(np.float64),
    "DT_INT8": np.dtype(np.int8),
    "DT_INT16": np.dtype(np.int16),
    "DT_INT32": np.dtype(np.int32),
    "DT_INT64": np.dtype(np.int64),
    "DT_UINT8": np.dtype(np.uint8),
    "DT_UINT16": np.dtype(np.uint16),
    "DT_UINT32": np.dtype(np.uint32),
    "DT_UINT64": np.dtype(np.uint64),
    "DT_BOOL": np.dtype(np.bool_),
    "DT_STRING": np.dtype(object),  # elements are `bytes`
    "DT_HALF": np.dtype(np.float16),
    "DT_COMPLEX64": np.dtype(np.complex64),
    "DT_COMPLEX128": np.dtype(np.complex128),
}
if _ml_dtypes is not None:
    _dtypes["DT_BFLOAT16"] = np.dtype(_ml_dtypes.bfloat16)

DTYPE_NAMES: Mapping[str, np.dtype[Any]] = MappingProxyType(_dtypes)
"""DataType name -> numpy dtype, for every DataType sealserve can carry in a numpy array."""

_NAME_BY_DTYPE = {dtype: name for name, dtype in DTYPE_NAMES.items()}

# The typed TensorProto field each DataType uses (tensor.cc ProtoHelper<T>).
_VALUE_FIELDS = {
    "DT_FLOAT": "float_val",
    "DT_DOUBLE": "double_val",
    "DT_INT32": "int_val",
    "DT_INT16": "int_val",
    "DT_INT8": "int_val",
    "DT_UINT8": "int_val",
    "DT_UINT16": "int_val",
    "DT_INT64": "int64_val",
    "DT_UINT32": "uint32_val",
    "DT_UINT64": "uint64_val",
    "DT_BOOL": "bool_val",
    "DT_STRING": "string_val",
    "DT_HALF": "half_val",
    "DT_BFLOAT16": "half_val",
    "DT_COMPLEX64": "scomplex_val",
    "DT_COMPLEX128": "dcomplex_val",
}

MAX_DIMS = 254  # TensorShape::MaxDimensions()
NUMPY_MAX_DIMS = 64  # numpy's limit: a request tensor of more dimensions is refused
MAX_FILLED_BYTES = 1 << 20
"""Largest tensor that may carry fewer values than it declares. TensorFlow fills the rest with
the last value given (zeros if none: `make_tensor_proto(0.0, shape=[n])` sends one value);
beyond this a few bytes on the wire must not make megabytes of tensor (a 25-byte request
declaring 60M floats)."""
DEFAULT_MAX_BYTES = 1 << 31
"""Largest decoded tensor `to_numpy` builds by default: a few bytes of proto may declare a huge
shape filled from one typed value, and TF Serving has no such guard (its allocation fails)."""

_INT64_MAX = (1 << 63) - 1


def data_type_name(number: int) -> str:
    """`DT_FLOAT` for 1; reference types as `DT_FLOAT_REF`; unknown numbers as `DataType(n)`."""
    name = _NAME_BY_ENUM.get(number)
    if name is None and number > 100:
        base = _NAME_BY_ENUM.get(number - 100)
        name = f"{base}_REF" if base is not None else None
    return name if name is not None else f"DataType({number})"


def data_type_enum(name: str) -> int:
    """The wire value of a DataType name (`DT_FLOAT` -> 1)."""
    try:
        return DATA_TYPES[name]
    except KeyError:
        raise InvalidArgument(f"unknown tensor dtype: {name}") from None


def data_type_string(name: str) -> str:
    """TensorFlow's own spelling of a DataType (`DT_FLOAT` -> `float`), as in TF's messages."""
    if name.endswith("_REF"):
        return data_type_string(name[: -len("_REF")]) + "_ref"
    if name in _TF_TYPE_STRINGS:
        return _TF_TYPE_STRINGS[name]
    if name.startswith("DT_"):
        return name[3:].lower()
    return name


def numpy_dtype(dtype_name: str) -> np.dtype[Any]:
    """The numpy dtype for a DataType name; InvalidArgument for types numpy cannot hold."""
    try:
        return DTYPE_NAMES[dtype_name]
    except KeyError:
        raise InvalidArgument(f"unsupported tensor dtype: {dtype_name}") from None


def dtype_name(dtype: Any) -> str:
    """The DataType name for a numpy dtype (unicode and bytes arrays are DT_STRING)."""
    if not isinstance(dtype, np.dtype):
        return _dtype_name(dtype)
    name = _NAME_BY_SEEN_DTYPE.get(dtype)  # asked on every request: remember the answers
    if name is None:
        name = _NAME_BY_SEEN_DTYPE[dtype] = _dtype_name(dtype)
    return name


_NAME_BY_SEEN_DTYPE: dict[Any, str] = {}


def _dtype_name(dtype: Any) -> str:
    np_dtype = np.dtype(dtype)
    if np_dtype.kind in "USO":
        return "DT_STRING"
    name = _NAME_BY_DTYPE.get(np_dtype.newbyteorder("="))
    if name is None:
        raise InvalidArgument(f"numpy dtype {np_dtype} has no TensorFlow DataType")
    return name


def _shape_text(dims: list[int] | tuple[int, ...]) -> str:
    return "[" + ",".join(str(d) for d in dims) + "]"


def _proto_shape(proto: TensorProto) -> tuple[tuple[int, ...], int]:
    """The dims of a request tensor and its element count (TensorShape::IsValid rules)."""
    dims = tuple(d.size for d in proto.tensor_shape.dim)
    if len(dims) > NUMPY_MAX_DIMS:
        raise InvalidArgument(
            f"tensor_shape has {len(dims)} dimensions; at most {NUMPY_MAX_DIMS} are supported"
            + (f" ({MAX_DIMS} in TensorFlow)" if len(dims) > MAX_DIMS else "")
        )
    count = 1
    for size in dims:
        if size < 0:
            raise InvalidArgument(
                f"tensor_shape {_shape_text(dims)} has a negative dimension; "
                "a request tensor needs every size"
            )
        count *= size
    if count > _INT64_MAX:
        raise InvalidArgument(f"tensor_shape {_shape_text(dims)} has too many elements")
    return dims, count


def _read_varint32(data: bytes, pos: int) -> tuple[int, int]:
    result = 0
    for shift in range(0, 35, 7):
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result & 0xFFFFFFFF, pos
    raise ValueError("varint32 too long")


def _decode_string_content(content: bytes, count: int) -> list[bytes]:
    """TensorFlow's string `tensor_content` (port::DecodeStringList): `count` varint32 lengths,
    then the strings back to back, consuming the content exactly."""
    pos = 0
    sizes = []
    try:
        for _ in range(count):
            size, pos = _read_varint32(content, pos)
            sizes.append(size)
    except ValueError:
        raise InvalidArgument(
            f"tensor_content of a DT_STRING tensor does not hold {count} string lengths"
        ) from None
    if sum(sizes) != len(content) - pos:
        raise InvalidArgument(
            f"tensor_content of a DT_STRING tensor holds {len(content) - pos} bytes of strings, "
            f"but its lengths add up to {sum(sizes)}"
        )
    strings = []
    for size in sizes:
        strings.append(content[pos : pos + size])
        pos += size
    return strings


def _encode_string_content(strings: list[bytes]) -> bytes:
    parts = bytearray()
    for s in strings:
        size = len(s)
        while size >= 0x80:
            parts.append((size & 0x7F) | 0x80)
            size >>= 7
        parts.append(size)
    return bytes(parts) + b"".join(strings)


def _object_array(values: list[Any], count: int) -> np.ndarray:
    # np.array(list_of_bytes, dtype=object) is fine, but an explicit fill can never be
    # mistaken for nested sequences.
    array = np.empty(count, dtype=object)
    array[:] = values
    return array


def _from_content(name: str, np_dtype: np.dtype[Any], content: bytes, count: int) -> np.ndarray:
    if name == "DT_STRING":
        return _object_array(_decode_string_content(content, count), count)
    expected = count * np_dtype.itemsize
    if len(content) != expected:
        raise InvalidArgument(
            f"tensor_content holds {len(content)} bytes, but {count} {name} values need {expected}"
        )
    if name == "DT_BOOL":
        raw = np.frombuffer(content, dtype=np.uint8)
        if (raw > 1).any():
            raise InvalidArgument("tensor_content of a DT_BOOL tensor holds a byte other than 0/1")
        return raw.view(np.bool_)
    # tensor_content is little-endian (TensorFlow only runs on little-endian hosts).
    if sys.byteorder == "little":
        return np.frombuffer(content, dtype=np_dtype)
    return np.frombuffer(content, dtype=np_dtype.newbyteorder("<")).astype(
        np_dtype
    )  # pragma: no cover


def _from_fields(name: str, np_dtype: np.dtype[Any], proto: TensorProto, count: int) -> np.ndarray:
    field = getattr(proto, _VALUE_FIELDS[name])
    if name in ("DT_COMPLEX64", "DT_COMPLEX128"):
        available = len(field) // 2  # (real, imag) pairs; a trailing odd value is ignored
        parts = np.array(field[: 2 * min(available, count)], dtype=np_dtype.type(0).real.dtype)
        values = parts.view(np_dtype)
    else:
        available = len(field)
        head = field[: min(available, count)] if available > count else field
        if name == "DT_STRING":
            values = _object_array(list(head), len(head))
        elif _VALUE_FIELDS[name] == "int_val":
            # C casts from int32, as tensor.cc's std::copy_n does (wraps for narrow types).
            values = np.array(head, dtype=np.int32).astype(np_dtype)
        elif name in ("DT_HALF", "DT_BFLOAT16"):
            values = np.array(head, dtype=np.int32).astype(np.uint16).view(np_dtype)
        else:
            values = np.array(head, dtype=np_dtype)
    if available == 0:
        if name == "DT_STRING":
            return _object_array([b""] * count, count)
        return np.zeros(count, dtype=np_dtype)
    if available < count:
        # FromProtoField: the rest is filled with the last value given.
        if name == "DT_STRING":  # np.full would read bytes as a NUL-stripping 'S' scalar
            return _object_array(values.tolist() + [values[-1]] * (count - available), count)
        fill = np.full(count - available, values[-1], dtype=np_dtype)
        values = np.concatenate([values, fill])
    return values


_STRING_OVERHEAD = 8 + 33  # an object array's pointer and an empty `bytes` object


def decoded_bytes(proto: TensorProto, *, content: bytes | None = None) -> int:
    """The memory `to_numpy` would take for `proto`, checked before anything is built: its
    dtype and shape must be valid, and the values on the wire must match the declared shape
    (all of them, or fewer only within `MAX_FILLED_BYTES`). `content`: `proto.tensor_content`
    if the caller has read it already (see `to_numpy`); no values are decoded."""
    name = data_type_name(proto.dtype)
    np_dtype = DTYPE_NAMES.get(name)
    if np_dtype is None:
        raise InvalidArgument(f"unsupported tensor dtype: {name}")
    dims, count = _proto_shape(proto)
    if count == 0:
        return 0
    if content is None:
        content = proto.tensor_content
    if name == "DT_STRING":
        if content:
            return len(content) + count * _STRING_OVERHEAD
        strings = proto.string_val
        given = len(strings)
        payload = sum(len(v) for v in strings) if given else 0
        size = payload + count * _STRING_OVERHEAD
        if given < count:
            _check_fill(name, dims, given, size)
            size += (count - given) * (len(strings[-1]) if given else 0)
            _check_fill(name, dims, given, size)
        return size
    size = count * np_dtype.itemsize
    if not content:
        field = getattr(proto, _VALUE_FIELDS[name])
        given = len(field) // 2 if name in ("DT_COMPLEX64", "DT_COMPLEX128") else len(field)
        if given < count:
            _check_fill(name, dims, given, size)
    return size


def _check_fill(name: str, dims: tuple[int, ...], given: int, size: int) -> None:
    if size > MAX_FILLED_BYTES:
        raise InvalidArgument(
            f"tensor of shape {_shape_text(dims)} and dtype {name} carries {given} values; "
            f"a tensor filled from fewer values than its shape holds may take at most "
            f"{MAX_FILLED_BYTES} bytes"
        )


def to_numpy(
    proto: TensorProto,
    *,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    size: int | None = None,
    content: bytes | None = None,
) -> np.ndarray:
    """Decode a request TensorProto (either encoding) into a numpy array.

    DT_STRING tensors become object arrays of `bytes`. Raises InvalidArgument for dtypes numpy
    cannot hold (DT_RESOURCE, DT_VARIANT, quantized, ...), invalid shapes, malformed
    `tensor_content` and shapes far larger than the values sent (`decoded_bytes`);
    RESOURCE_EXHAUSTED when the tensor would exceed `max_bytes`. `size`: `decoded_bytes(proto)`,
    when the caller has checked it already.

    `content`: `proto.tensor_content`, when the caller has read it already. Every read of a
    bytes field hands out a fresh copy (protobuf's upb backend; 600 kB for a ResNet-50 image,
    15-70 us with the GIL held), so the field is read once per tensor: here, or by a caller
    that passes what it read to `decoded_bytes` and to this function alike.
    """
    name = data_type_name(proto.dtype)
    if content is None and DTYPE_NAMES.get(name) is not None:
        content = proto.tensor_content
    if size is None:
        size = decoded_bytes(proto, content=content)
    np_dtype = DTYPE_NAMES[name]
    dims, count = _proto_shape(proto)
    if max_bytes is not None and size > max_bytes:
        raise SealserveError(
            f"tensor of shape {_shape_text(dims)} and dtype {name} needs "
            f"{size} bytes, more than the {max_bytes} allowed",
            code=Code.RESOURCE_EXHAUSTED,
        )
    if count == 0:  # Tensor::FromProto ignores any values of an empty tensor
        return np.empty(dims, dtype=np_dtype)
    if content:
        values = _from_content(name, np_dtype, content, count)
    else:
        values = _from_fields(name, np_dtype, proto, count)
    return values.reshape(dims)


def _string_values(flat: np.ndarray) -> list[bytes]:
    out = []
    for value in flat.tolist():
        if isinstance(value, bytes):
            out.append(value)
        elif isinstance(value, str):
            out.append(value.encode("utf-8"))
        else:
            raise InvalidArgument(
                f"DT_STRING values must be bytes or str, got {type(value).__name__}"
            )
    return out


def _as_typed_array(array: Any, dtype: str | None) -> tuple[str, np.ndarray]:
    arr = np.asarray(array)
    if dtype is None:
        name = dtype_name(arr.dtype)
        return name, arr
    if dtype == "DT_STRING":
        return dtype, arr
    target = numpy_dtype(dtype)
    if arr.dtype != target:
        try:
            arr = arr.astype(target)
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"cannot convert a {arr.dtype} array to {dtype}: {exc}") from None
    return dtype, arr


def from_numpy(
    array: Any,
    dtype: str | None = None,
    *,
    tensor_content: bool = False,
    out: TensorProto | None = None,
) -> TensorProto:
    """Encode an array as a TensorProto, as TF Serving's Predict response does.

    By default values go into the typed fields (`float_val`, `int_val`, `string_val`, ...):
    TF Serving serialises outputs with `Tensor::AsProtoField`, and clients commonly read
    `response.outputs[k].float_val` directly. `tensor_content=True` writes numeric values as
    raw little-endian bytes instead (AsProtoTensorContent; much faster for large tensors);
    strings always use `string_val`, the form every client decodes. `dtype` (a DataType name)
    converts the array first; str elements of a DT_STRING array are UTF-8 encoded. `out`, if
    given, is cleared and filled in place (e.g. `response.outputs[alias]`) and returned.
    """
    name, arr = _as_typed_array(array, dtype)
    if out is None:
        from tensorflow.core.framework import tensor_pb2  # imports TensorFlow; see module doc

        out = tensor_pb2.TensorProto()
    else:
        out.Clear()
    out.dtype = data_type_enum(name)
    dims = out.tensor_shape.dim
    for size in arr.shape:
        dims.add(size=size)
    flat = arr.reshape(-1)
    if flat.size == 0:
        return out
    if name == "DT_STRING":
        out.string_val.extend(_string_values(flat))
    elif tensor_content:
        little = arr.dtype if sys.byteorder == "little" else arr.dtype.newbyteorder("<")
        out.tensor_content = np.ascontiguousarray(flat, dtype=little).tobytes()
    elif name in ("DT_HALF", "DT_BFLOAT16"):
        out.half_val.extend(np.ascontiguousarray(flat).view(np.uint16).tolist())
    elif name in ("DT_COMPLEX64", "DT_COMPLEX128"):
        parts = np.ascontiguousarray(flat).view(flat.real.dtype)
        getattr(out, _VALUE_FIELDS[name]).extend(parts.tolist())
    else:
        getattr(out, _VALUE_FIELDS[name]).extend(flat.tolist())
    return out


_VARINT_EXTRA = {"DT_INT8": 1, "DT_UINT8": 1, "DT_INT16": 2, "DT_UINT16": 2, "DT_INT32": 1}


def encoded_bytes_estimate(array: np.ndarray) -> int:
    """About how many bytes `from_numpy(array)` will serialise to, without building it: the
    data plane refuses a response too large to send before spending memory on it."""
    if array.dtype.kind in "OSU":
        if array.dtype.kind == "O":
            flat = array.reshape(-1).tolist()
            return sum(len(v) if isinstance(v, bytes | str) else 0 for v in flat) + 2 * len(flat)
        return array.nbytes + 2 * array.size
    name = dtype_name(array.dtype)
    # packed typed fields: fixed-width floats, varint integers (one or two bytes more than
    # their width for typical values; negatives take ten)
    return array.nbytes + _VARINT_EXTRA.get(name, 0) * array.size
