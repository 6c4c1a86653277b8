"""The :predict body: `parse_predict_request` turns a parsed body into numpy inputs with the
signature's dtypes (row `instances` and columnar `inputs` formats, TF's shape rules and
messages; well-formed tensors go through a vectorised path, anything else is re-walked
element by element in TF's order so that the first error is TF Serving's), and
`format_predict_response` writes `{"predictions": ...}` / `{"outputs": ...}` byte for byte as
TF Serving's RapidJSON PrettyWriter does. Stateless; thread safe.
"""

from __future__ import annotations

import binascii
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np

from sealserve.errors import Code, InvalidArgument, SealserveError
from sealserve.serving.rest_json.numbers import FLT_MAX, decimal_tokens
from sealserve.serving.rest_json.text import (
    INDENT,
    WRITE_STRING_BYTES,
    WRITE_VALUE_BYTES,
    quote,
    raw_text,
    render,
)
from sealserve.serving.rest_json.values import (
    FLOAT_MAX_INT,
    INT_RANGES,
    is_b64_object,
    is_element_object,
    leaf_value,
    require_object,
    signature_name,
    utf8,
)
from sealserve.serving.signatures import DEFAULT_SIGNATURE, SignatureInfo, TensorInfo
from sealserve.serving.tensor_proto import DTYPE_NAMES, data_type_string, dtype_name

# ---------------------------------------------------------------------------------------------
# Predict requests.


@dataclass(frozen=True)
class PredictRequest:
    """A parsed REST Predict body: the resolved signature, its inputs, and which format the
    client used (the response must use the matching one)."""

    signature_name: str
    inputs: dict[str, np.ndarray]
    row_format: bool


MAX_RANK = 64  # numpy's limit on dimensions (TensorFlow's is 254)


def _dense_shape(value: Any, batched: bool = False) -> list[int]:
    """json_tensor.cc GetDenseTensorShape: follow first elements down (iteratively). A
    tensor of more dimensions than numpy holds is the client's error; `batched`: one more
    dimension will be added (the row format's instances)."""
    dims = []
    while isinstance(value, list):
        dims.append(len(value))
        if not value:
            break
        value = value[0]
    if len(dims) + batched > MAX_RANK:
        raise InvalidArgument(
            f"JSON arrays nested {len(dims) + batched} deep: tensors of more than "
            f"{MAX_RANK} dimensions are not supported"
        )
    return dims


def _as_array(values: list[Any], dtype: str, dims: list[int]) -> np.ndarray:
    np_dtype = DTYPE_NAMES[dtype]
    if dtype == "DT_STRING":
        array = np.empty(len(values), dtype=object)
        array[:] = values
    elif dtype == "DT_FLOAT":
        array = np.array(values, dtype=np.float64).astype(np.float32)
    else:
        array = np.array(values, dtype=np_dtype)
    return array.reshape(dims)


def _exact_tensor(value: Any, dtype: str, dims: list[int]) -> np.ndarray:
    """json_tensor.cc FillTensorProto, element by element in TF's order (errors included)."""
    rank = len(dims)
    values: list[Any] = []

    def leaf(item: Any, level: int) -> None:
        if level != rank:
            raise InvalidArgument(
                f"JSON Value: {render(item)} found at incorrect level: {level + 1} in the JSON "
                f"DOM. Expected at level: {rank}"
            )
        values.append(leaf_value(item, dtype))

    def check_list(item: list[Any], level: int) -> None:
        if level >= rank:
            raise InvalidArgument(
                f"Encountered list at unexpected level: {level} expected < {rank}"
            )
        if len(item) != dims[level]:
            raise InvalidArgument(
                f"Encountered list at unexpected size: {len(item)} at level: {level} "
                f"expected size: {dims[level]}"
            )

    if not isinstance(value, list):
        leaf(value, 0)
    else:
        check_list(value, 0)
        stack = [iter(value)]
        while stack:
            item = next(stack[-1], _END)
            if item is _END:
                stack.pop()
            elif isinstance(item, list):
                check_list(item, len(stack))
                stack.append(iter(item))
            else:
                leaf(item, len(stack))
    if dtype not in DTYPE_NAMES:  # no leaves, so no conversion error was raised
        raise SealserveError(
            f"Conversion of JSON Value: {render(value)} to type: {data_type_string(dtype)}",
            code=Code.UNIMPLEMENTED,
        )
    return _as_array(values, dtype, dims)


_END = object()


def _fast_tensor(value: Any, dtype: str, dims: list[int]) -> np.ndarray | None:
    """The vectorised path: the tensor if `value` is provably valid for `dtype`, else None."""
    if dtype not in DTYPE_NAMES:
        return None
    items = [value]
    for size in dims:
        if not set(map(type, items)) <= {list} or not set(map(len, items)) <= {size}:
            return None
        items = list(chain.from_iterable(items))
    types = set(map(type, items))
    np_dtype = DTYPE_NAMES[dtype]
    if not items:
        return np.empty(dims, dtype=np_dtype)
    try:
        if dtype in FLOAT_MAX_INT:
            if not types <= {float, int}:
                return None
            array = np.array(items, dtype=np.float64)
            with np.errstate(invalid="ignore"):
                if int in types and (np.abs(array) > FLOAT_MAX_INT[dtype]).any():
                    return None  # some integer may be lossy; let the exact walk decide
                if dtype == "DT_FLOAT":
                    finite = np.isfinite(array)
                    if (np.abs(array[finite]) > FLT_MAX).any():
                        return None
                    array = array.astype(np.float32)
        elif dtype in INT_RANGES:
            if types != {int}:
                return None
            wide = np.uint64 if dtype == "DT_UINT64" else np.int64
            array = np.array(items, dtype=wide)
            low, high = INT_RANGES[dtype]
            if int(array.min()) < low or int(array.max()) > high:
                return None
            array = array.astype(np_dtype)
        elif dtype == "DT_BOOL":
            if types != {bool}:
                return None
            array = np.array(items, dtype=np.bool_)
        elif dtype == "DT_STRING":
            if types != {str}:
                return None
            array = np.empty(len(items), dtype=object)
            array[:] = [utf8(s) for s in items]
        else:
            return None
    except (OverflowError, ValueError, TypeError):
        return None
    return array.reshape(dims)


def _tensor(value: Any, dtype: str) -> np.ndarray:
    dims = _dense_shape(value)
    array = _fast_tensor(value, dtype, dims)
    return array if array is not None else _exact_tensor(value, dtype, dims)


def _shape_string(dims: list[int] | tuple[int, ...]) -> str:
    return "[" + ",".join(str(d) for d in dims) + "]"


def _status_text(error: SealserveError) -> str:
    return f"{error.code.name}: {error.message}"  # absl::Status::ToString()


class _Column:
    """The instances of one input, checked for equal size and shape (AddInstanceItem)."""

    __slots__ = ("arrays", "dims")

    def __init__(self) -> None:
        self.arrays: list[np.ndarray] = []
        self.dims: list[int] | None = None

    def add(self, value: Any, dtype: str) -> None:
        dims = _dense_shape(value, batched=True)
        array = _fast_tensor(value, dtype, dims)
        if array is None:
            array = _exact_tensor(value, dtype, dims)
        if self.dims is None:
            self.dims = dims
        elif math.prod(self.dims) != array.size:
            raise InvalidArgument(
                f"Expecting tensor size: {math.prod(self.dims)} but got: {array.size}"
            )
        elif self.dims != dims:
            raise InvalidArgument(
                f"Expecting shape {_shape_string(self.dims)} but got: {_shape_string(dims)}"
            )
        self.arrays.append(array)


def _from_instances(instances: list[Any], infos: Mapping[str, TensorInfo]) -> dict[str, Any]:
    names = sorted(infos)
    first = instances[0]
    if not isinstance(first, dict) and len(names) > 1:
        raise InvalidArgument(
            "instances is a plain list, but expecting list of objects as multiple input "
            "tensors required as per tensorinfo_map"
        )
    if is_element_object(first):
        return _from_named_instances(instances, names, infos)
    # One tensor for the whole list when it is well-formed: same result as per instance.
    name = names[0]
    dtype = infos[name].dtype
    whole = _fast_tensor(instances, dtype, _dense_shape(instances))
    if whole is not None:
        return {name: whole}
    column = _Column()
    for index, item in enumerate(instances):
        if is_element_object(item):
            raise InvalidArgument(
                f"Expecting value/list but got object at item {index} of input list"
            )
        try:
            column.add(item, dtype)
        except SealserveError as error:
            raise InvalidArgument(
                f"Failed to process element: {index} of 'instances' list. "
                f"Error: {_status_text(error)}"
            ) from None
    return {name: np.stack(column.arrays)}


def _from_named_instances(
    instances: list[Any], names: list[str], infos: Mapping[str, TensorInfo]
) -> dict[str, Any]:
    expected = set(names)
    if all(is_element_object(item) and item.keys() == expected for item in instances):
        arrays = {}
        for name in names:
            column_values = [item[name] for item in instances]
            array = _fast_tensor(column_values, infos[name].dtype, _dense_shape(column_values))
            if array is None:
                break
            arrays[name] = array
        else:
            return arrays
    columns = {name: _Column() for name in names}
    for index, item in enumerate(instances):
        if not is_element_object(item):
            raise InvalidArgument(f"Expecting object but got list at item {index} of input list")
        for key, value in item.items():
            try:
                if key not in infos:
                    raise InvalidArgument(f"JSON object: does not have named input: {key}")
                columns[key].add(value, infos[key].dtype)
            except SealserveError as error:
                raise InvalidArgument(
                    f"Failed to process element: {index} key: {key} of 'instances' list. "
                    f"Error: {_status_text(error)}"
                ) from None
        if item.keys() != expected:
            raise InvalidArgument(
                f"Failed to process element: {index} of 'instances' list. JSON object: "
                f"{render(item)} keys must be equal to: {','.join(names)}"
            )
    return {name: np.stack(columns[name].arrays) for name in names}


def _from_inputs(value: Any, infos: Mapping[str, TensorInfo]) -> dict[str, Any]:
    names = sorted(infos)
    if not isinstance(value, dict) or is_b64_object(value):
        if len(names) > 1:
            raise InvalidArgument(
                "inputs is a plain value/list, but expecting an object as multiple input "
                "tensors required as per tensorinfo_map"
            )
        return {names[0]: _tensor(value, infos[names[0]].dtype)}
    tensors = {}
    for name in names:
        if name not in value:
            raise InvalidArgument(f"Missing named input: {name} in 'inputs' object.")
        tensors[name] = _tensor(value[name], infos[name].dtype)
    return tensors


def parse_predict_request(
    body: Any, signature_lookup: Callable[[str], SignatureInfo]
) -> PredictRequest:
    """Turn a parsed REST Predict body into numpy inputs (json_tensor.cc
    FillPredictRequestFromJson).

    `signature_lookup` is called with the signature name (`serving_default` when the body
    names none or an empty one) and raises for an unknown signature. Inputs are decoded with
    the signature's input dtypes: DT_FLOAT -> float32, ..., DT_STRING -> object arrays of bytes.
    Raises InvalidArgument with TF Serving's messages; UNIMPLEMENTED (columnar format) for
    input dtypes JSON cannot carry -- in the row format TF Serving wraps that error into an
    InvalidArgument, and so do we.
    """
    document = require_object(body)
    requested = signature_name(document)
    signature = signature_lookup(requested or DEFAULT_SIGNATURE)
    if not signature.inputs:
        raise InvalidArgument(f"Failed to get input map for signature: {requested or 'DEFAULT'}")
    if "instances" in document:
        if "inputs" in document:
            raise InvalidArgument(
                f"JSON Value: {render(document)} Not formatted correctly expecting only one "
                "of 'inputs' or 'instances' keys to exist "
            )
        instances = document["instances"]
        if not isinstance(instances, list):
            raise InvalidArgument(
                f"JSON Value: {render(document)} Excepting 'instances' to be an list/array"
            )
        if not instances:
            raise InvalidArgument(f"JSON Value: {render(document)} No values in 'instances' array")
        inputs = _from_instances(instances, signature.inputs)
        return PredictRequest(requested or DEFAULT_SIGNATURE, inputs, True)
    if "inputs" in document:
        inputs = _from_inputs(document["inputs"], signature.inputs)
        return PredictRequest(requested or DEFAULT_SIGNATURE, inputs, False)
    raise InvalidArgument("Missing 'inputs' or 'instances' key")


# ---------------------------------------------------------------------------------------------
# Predict responses.

_BYTES_SUFFIX = "_bytes"  # DT_STRING outputs with this alias suffix are written as {"b64": ...}


def _leaf_tokens(name: str, array: np.ndarray, leaf_level: int) -> list[str]:
    """JSON text of every element (row-major). `leaf_level` is the number of open JSON levels
    around each element, which indents a `{"b64": ...}` object."""
    dtype = dtype_name(array.dtype)
    flat = array.reshape(-1)
    if flat.size == 0:
        return []
    if dtype in ("DT_FLOAT", "DT_DOUBLE"):
        return decimal_tokens(flat)
    if dtype == "DT_HALF":  # written as the float it widens to (TF Serving's DT_HALF case)
        with np.errstate(invalid="ignore"):
            return decimal_tokens(flat.astype(np.float32))
    if dtype in INT_RANGES:
        return list(map(str, flat.tolist()))
    if dtype == "DT_BOOL":
        return ["true" if v else "false" for v in flat.tolist()]
    if dtype == "DT_STRING":
        values = [v if isinstance(v, bytes) else utf8(str(v)) for v in flat.tolist()]
        if not name.endswith(_BYTES_SUFFIX):
            return [quote(raw_text(v)) for v in values]
        inner = "{\n" + INDENT * (leaf_level + 1) + '"b64": "'
        outer = '"\n' + INDENT * leaf_level + "}"
        return [inner + binascii.b2a_base64(v, newline=False).decode() + outer for v in values]
    raise InvalidArgument(f"Failed to write JSON value for tensor type: {data_type_string(dtype)}")


def _nest(
    tokens: list[str], outer: int, dims: tuple[int, ...], level: int, one_line: bool
) -> list[str]:
    """Wrap row-major leaf tokens into `outer` JSON arrays of shape `dims`. `level` is the
    number of JSON levels open around each of those arrays; `one_line` is RapidJSON's
    kFormatSingleLineArray (row format), else every element goes on its own indented line."""
    items = tokens
    for axis in range(len(dims) - 1, -1, -1):
        size = dims[axis]
        count = outer * math.prod(dims[:axis])
        depth = level + axis
        if size == 0:
            items = ["[]"] * count
            continue
        if one_line:
            start, sep, end = "[", ", ", "]"
        else:
            inner = INDENT * (depth + 1)
            start, sep, end = "[\n" + inner, ",\n" + inner, "\n" + INDENT * depth + "]"
        items = [start + sep.join(items[i * size : (i + 1) * size]) + end for i in range(count)]
    return items


def _row_json(names: list[str], arrays: dict[str, np.ndarray]) -> str:
    batch = -1
    for name in names:
        array = arrays[name]
        if array.ndim == 0:
            raise InvalidArgument(f"Tensor name: {name} has no shape information ")
        if batch >= 0 and array.shape[0] != batch:
            raise InvalidArgument(
                f"Tensor name: {name} has inconsistent batch size: {array.shape[0]} "
                f"expecting: {batch}"
            )
        batch = array.shape[0]
    objects = len(names) > 1
    base = 3 if objects else 2  # open levels: root, "predictions" array (, instance object)
    per_instance = {}
    for name in names:
        array = arrays[name]
        tokens = _leaf_tokens(name, array, base + array.ndim - 1)
        per_instance[name] = _nest(tokens, batch, array.shape[1:], base, True)
    if batch == 0:
        return '{\n    "predictions": []\n}'
    if not objects:
        body = ", ".join(per_instance[names[0]])
    else:
        keys = [quote(name) + ": " for name in names]
        pad = INDENT * 3
        rows = []
        for i in range(batch):
            members = (",\n" + pad).join(
                k + per_instance[n][i] for k, n in zip(keys, names, strict=True)
            )
            rows.append("\n" + INDENT * 2 + "{\n" + pad + members + "\n" + INDENT * 2 + "}")
        body = ",".join(rows)
    return '{\n    "predictions": [' + body + "\n    ]\n}"


def _columnar_json(names: list[str], arrays: dict[str, np.ndarray]) -> str:
    if len(names) == 1:
        array = arrays[names[0]]
        tokens = _leaf_tokens(names[0], array, 1 + array.ndim)
        return '{\n    "outputs": ' + _nest(tokens, 1, array.shape, 1, False)[0] + "\n}"
    members = []
    for name in names:
        array = arrays[name]
        tokens = _leaf_tokens(name, array, 2 + array.ndim)
        value = _nest(tokens, 1, array.shape, 2, False)[0]
        members.append("\n" + INDENT * 2 + quote(name) + ": " + value)
    return '{\n    "outputs": {' + ",".join(members) + "\n    }\n}"


def predict_response_cost(outputs: Mapping[str, np.ndarray]) -> int:
    """An upper bound of the memory `format_predict_response(outputs, ...)` holds at once,
    either format: what a REST request is charged against the server's in-flight budget
    before its answer is written."""
    total = 0
    for array in outputs.values():
        array = np.asarray(array)
        total += WRITE_VALUE_BYTES * array.size
        if array.dtype == object:
            total += WRITE_STRING_BYTES * sum(len(value) for value in array.flat)
    return total


def format_predict_response(outputs: Mapping[str, np.ndarray], row_format: bool) -> bytes:
    """A Predict response body, byte for byte as TF Serving writes it (MakeJsonFromTensors).

    Row format -> `{"predictions": [...]}` (one output: a value per instance; several: an
    object per instance; every output must share dim 0); columnar -> `{"outputs": v}` or
    `{"outputs": {alias: v}}`. Aliases are written in sorted order. DT_STRING outputs (object
    arrays of bytes/str) are JSON strings, or `{"b64": ...}` when the alias ends in `_bytes`.
    Raises InvalidArgument with TF Serving's messages for empty maps, scalars in the row
    format, inconsistent batch sizes and dtypes JSON cannot carry.
    """
    if not outputs:
        raise InvalidArgument("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    arrays = {name: np.asarray(outputs[name]) for name in names}
    text = _row_json(names, arrays) if row_format else _columnar_json(names, arrays)
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")
