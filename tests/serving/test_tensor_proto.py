"""TensorProto <-> numpy: TensorFlow's own C++ decoder (`tf.io.parse_tensor`, i.e.
Tensor::FromProto) is the oracle for every request encoding; responses must be what
Tensor::AsProtoField writes and must decode identically in TensorFlow."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sealserve.errors import Code, InvalidArgument, SealserveError
from sealserve.serving.tensor_proto import (
    DATA_TYPES,
    DTYPE_NAMES,
    MAX_FILLED_BYTES,
    data_type_name,
    data_type_string,
    decoded_bytes,
    dtype_name,
    from_numpy,
    numpy_dtype,
    to_numpy,
)
from sealserve.serving.tensorflow_runtime import import_tensorflow

tf = import_tensorflow()
from tensorflow.core.framework import tensor_pb2, types_pb2  # noqa: E402

NUMERIC = [name for name in DTYPE_NAMES if name != "DT_STRING"]


def make(dtype: str, shape: list[int] | None = None, unknown_rank: bool = False, **fields):
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DataType.Value(dtype), **fields)
    for size in shape or []:
        proto.tensor_shape.dim.add(size=size)
    proto.tensor_shape.unknown_rank = unknown_rank
    return proto


def tf_decode(proto) -> np.ndarray:
    """What TensorFlow's C++ Tensor::FromProto makes of a proto."""
    dtype = tf.dtypes.as_dtype(proto.dtype)
    result = tf.io.parse_tensor(proto.SerializeToString(), dtype).numpy()
    if isinstance(result, bytes):  # a scalar string tensor's numpy() is bytes
        return np.array(result, dtype=object)
    return np.asarray(result)


def assert_same(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape
    assert actual.dtype == expected.dtype or (actual.dtype == object and expected.dtype == object)
    if actual.dtype == object:
        assert actual.tolist() == expected.tolist()
    else:  # bitwise, so NaNs and signed zeros count
        assert actual.tobytes() == np.ascontiguousarray(expected).tobytes()


def test_module_imports_no_tensorflow():
    code = (
        "import sys; import sealserve.serving.tensor_proto, sealserve.serving.rest_json; "
        "print('tensorflow' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


def test_data_type_numbers_match_types_proto():
    for name, number in types_pb2.DataType.items():
        if number < 100:
            assert DATA_TYPES[name] == number
            assert data_type_name(number) == name
    assert data_type_name(101) == "DT_FLOAT_REF"
    assert data_type_name(999) == "DataType(999)"


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("DT_FLOAT", "float"),
        ("DT_DOUBLE", "double"),
        ("DT_INT32", "int32"),
        ("DT_UINT8", "uint8"),
        ("DT_STRING", "string"),
        ("DT_HALF", "half"),
        ("DT_BFLOAT16", "bfloat16"),
        ("DT_COMPLEX64", "complex64"),
        ("DT_RESOURCE", "resource"),
        ("DT_FLOAT_REF", "float_ref"),
        ("DT_INVALID", "INVALID"),
    ],
)
def test_data_type_string_is_tensorflows_spelling(name, text):
    assert data_type_string(name) == text


def test_dtype_mapping_both_ways():
    for name, dtype in DTYPE_NAMES.items():
        assert numpy_dtype(name) == dtype
        assert dtype_name(dtype) == name
        if name != "DT_STRING":
            assert tf.dtypes.as_dtype(dtype).as_datatype_enum == DATA_TYPES[name]
    assert dtype_name(np.dtype("<U3")) == "DT_STRING"
    assert dtype_name(np.dtype("S3")) == "DT_STRING"
    assert dtype_name(np.dtype(">f4")) == "DT_FLOAT"
    with pytest.raises(InvalidArgument, match="^unsupported tensor dtype: DT_RESOURCE$"):
        numpy_dtype("DT_RESOURCE")
    with pytest.raises(InvalidArgument, match=r"^numpy dtype datetime64\[s\] has no"):
        dtype_name(np.dtype("datetime64[s]"))


# -- request decoding: TensorFlow's FromProto semantics, case by case --------------------------

ORACLE_CASES = {
    "float_val": make("DT_FLOAT", [2, 2], float_val=[1, 2, 3, 4]),
    "one value broadcasts": make("DT_FLOAT", [3], float_val=[1.5]),
    "fewer values repeat the last": make("DT_FLOAT", [5], float_val=[1, 2]),
    "extra values are ignored": make("DT_FLOAT", [2], float_val=[1, 2, 3]),
    "no values are zeros": make("DT_FLOAT", [3]),
    "scalar": make("DT_DOUBLE", [], double_val=[2.5]),
    "unknown_rank is ignored": make("DT_FLOAT", [2], unknown_rank=True, float_val=[1, 2]),
    "unknown_rank without dims is a scalar": make("DT_FLOAT", unknown_rank=True, float_val=[7]),
    "int_val wraps to uint8": make("DT_UINT8", [3], int_val=[300, -1, 7]),
    "int_val wraps to int8": make("DT_INT8", [2], int_val=[200, -129]),
    "int_val wraps to uint16": make("DT_UINT16", [1], int_val=[70000]),
    "int16": make("DT_INT16", [2], int_val=[-32768, 32767]),
    "int64": make("DT_INT64", [2], int64_val=[-(2**63), 2**63 - 1]),
    "uint32": make("DT_UINT32", [1], uint32_val=[2**32 - 1]),
    "uint64": make("DT_UINT64", [2], uint64_val=[2**64 - 1, 0]),
    "bool": make("DT_BOOL", [3], bool_val=[True, False]),
    "half bits": make("DT_HALF", [3], half_val=[0x3C00, 0x13C00, 0x7E00]),
    "bfloat16 bits": make("DT_BFLOAT16", [2], half_val=[0x3F80, 0xC000]),
    "complex pairs repeat": make("DT_COMPLEX64", [3], scomplex_val=[1, 2, 3]),
    "complex128": make("DT_COMPLEX128", [1], dcomplex_val=[1.5, -2.5]),
    "strings repeat the last": make("DT_STRING", [3], string_val=[b"a", b"\xff\x00"]),
    "no strings are empty": make("DT_STRING", [2]),
    "tensor_content": make("DT_FLOAT", [2], tensor_content=np.float32([1, -2]).tobytes()),
    "tensor_content wins": make(
        "DT_FLOAT", [1], tensor_content=np.float32([7]).tobytes(), float_val=[1]
    ),
    "empty tensor ignores content": make("DT_FLOAT", [0, 3], tensor_content=b"\0\0\0"),
    "string tensor_content": make("DT_STRING", [2], tensor_content=b"\x02\x01abc"),
    "bool tensor_content": make("DT_BOOL", [2], tensor_content=b"\x01\x00"),
    "half tensor_content": make("DT_HALF", [1], tensor_content=np.float16([0.5]).tobytes()),
    "complex tensor_content": make(
        "DT_COMPLEX64", [1], tensor_content=np.complex64([1 + 2j]).tobytes()
    ),
}


@pytest.mark.parametrize("case", list(ORACLE_CASES))
def test_decodes_like_tensorflow(case):
    proto = ORACLE_CASES[case]
    assert_same(to_numpy(proto), tf_decode(proto))


ERROR_CASES = [
    (
        make("DT_FLOAT", [2], tensor_content=b"\0" * 4),
        "tensor_content holds 4 bytes, but 2 DT_FLOAT values need 8",
    ),
    (
        make("DT_FLOAT", [-1], float_val=[1]),
        "tensor_shape [-1] has a negative dimension; a request tensor needs every size",
    ),
    (
        make("DT_FLOAT", [1] * 255, float_val=[1]),
        "tensor_shape has 255 dimensions; at most 64 are supported (254 in TensorFlow)",
    ),
    (
        make("DT_FLOAT", [2**40, 2**40], float_val=[1]),
        "tensor_shape [1099511627776,1099511627776] has too many elements",
    ),
    (
        make("DT_BOOL", [2], tensor_content=b"\x02\x00"),
        "tensor_content of a DT_BOOL tensor holds a byte other than 0/1",
    ),
    (
        make("DT_STRING", [2], tensor_content=b"\x02\x01abcd"),
        "tensor_content of a DT_STRING tensor holds 4 bytes of strings, but its lengths "
        "add up to 3",
    ),
    (
        make("DT_STRING", [2], tensor_content=b"\x82"),
        "tensor_content of a DT_STRING tensor does not hold 2 string lengths",
    ),
]


# Beyond TensorFlow, which accepts these: numpy holds at most 64 dimensions, and a few bytes
# on the wire must not declare megabytes of filled tensor (issue #12 §4)
GUARD_CASES = [
    (
        make("DT_FLOAT", [1] * 100, float_val=[1]),
        "tensor_shape has 100 dimensions; at most 64 are supported",
    ),
    (
        make("DT_FLOAT", [60_000_000]),
        "tensor of shape [60000000] and dtype DT_FLOAT carries 0 values; a tensor filled from "
        "fewer values than its shape holds may take at most 1048576 bytes",
    ),
    (
        make("DT_STRING", [20_000_000]),
        "tensor of shape [20000000] and dtype DT_STRING carries 0 values; a tensor filled "
        "from fewer values than its shape holds may take at most 1048576 bytes",
    ),
    (
        make("DT_STRING", [3000], string_val=[b"x" * 1000]),
        "tensor of shape [3000] and dtype DT_STRING carries 1 values; a tensor filled "
        "from fewer values than its shape holds may take at most 1048576 bytes",
    ),
]


@pytest.mark.parametrize(("proto", "message"), GUARD_CASES)
def test_refuses_tiny_protos_declaring_huge_or_deep_tensors(proto, message):
    with pytest.raises(InvalidArgument) as info:
        decoded_bytes(proto)
    assert str(info.value) == message
    with pytest.raises(InvalidArgument):
        to_numpy(proto)


@pytest.mark.parametrize(("proto", "message"), ERROR_CASES)
def test_rejects_what_tensorflow_rejects(proto, message):
    with pytest.raises(InvalidArgument) as info:
        to_numpy(proto)
    assert str(info.value) == message
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf_decode(proto)


@pytest.mark.parametrize(
    ("dtype", "message"),
    [
        ("DT_RESOURCE", "unsupported tensor dtype: DT_RESOURCE"),
        ("DT_VARIANT", "unsupported tensor dtype: DT_VARIANT"),
        ("DT_INVALID", "unsupported tensor dtype: DT_INVALID"),
        ("DT_QINT8", "unsupported tensor dtype: DT_QINT8"),
    ],
)
def test_unsupported_dtypes(dtype, message):
    with pytest.raises(InvalidArgument) as info:
        to_numpy(make(dtype, [1]))
    assert str(info.value) == message


def test_unknown_and_reference_dtypes():
    with pytest.raises(InvalidArgument, match=r"^unsupported tensor dtype: DataType\(99\)$"):
        to_numpy(tensor_pb2.TensorProto(dtype=99))
    with pytest.raises(InvalidArgument, match="^unsupported tensor dtype: DT_FLOAT_REF$"):
        to_numpy(tensor_pb2.TensorProto(dtype=101))


def test_size_guard():
    proto = make("DT_FLOAT", [1 << 10, 1 << 10], tensor_content=bytes(4 << 20))
    with pytest.raises(SealserveError) as info:
        to_numpy(proto, max_bytes=1 << 20)
    assert info.value.code is Code.RESOURCE_EXHAUSTED
    assert str(info.value) == (
        "tensor of shape [1024,1024] and dtype DT_FLOAT needs 4194304 bytes, "
        "more than the 1048576 allowed"
    )
    assert to_numpy(make("DT_FLOAT", [4], float_val=[1]), max_bytes=16).shape == (4,)
    with pytest.raises(SealserveError, match="more than the 15 allowed"):
        to_numpy(make("DT_FLOAT", [4], float_val=[1]), max_bytes=15)


def test_a_few_values_may_fill_a_small_tensor_as_in_tensorflow():
    """`make_tensor_proto(0.5, shape=[...])` sends one value: TensorFlow repeats the last
    value given, within MAX_FILLED_BYTES; the declared size is checked before any copy."""
    assert to_numpy(make("DT_FLOAT", [3], float_val=[0.5])).tolist() == [0.5, 0.5, 0.5]
    assert to_numpy(make("DT_FLOAT", [MAX_FILLED_BYTES // 4])).shape == (MAX_FILLED_BYTES // 4,)
    assert decoded_bytes(make("DT_FLOAT", [2, 3], float_val=[1] * 6)) == 24
    with pytest.raises(InvalidArgument):
        decoded_bytes(make("DT_FLOAT", [MAX_FILLED_BYTES // 4 + 1]))


def test_tensor_content_is_zero_copy():
    data = np.arange(1000, dtype=np.float32)
    decoded = to_numpy(make("DT_FLOAT", [10, 100], tensor_content=data.tobytes()))
    assert decoded.shape == (10, 100)
    assert not decoded.flags.writeable
    assert np.array_equal(decoded.ravel(), data)


class _CountingReads:
    """A request TensorProto whose `tensor_content` reads are counted: each read of a bytes
    field is a fresh copy in protobuf's upb backend (600 kB for a ResNet-50 image)."""

    def __init__(self, proto: tensor_pb2.TensorProto) -> None:
        self._proto, self.reads = proto, 0

    @property
    def tensor_content(self) -> bytes:
        self.reads += 1
        return self._proto.tensor_content

    def __getattr__(self, name: str) -> object:
        return getattr(self._proto, name)


@pytest.mark.parametrize("name", ["DT_FLOAT", "DT_STRING"])
def test_tensor_content_is_read_once_per_tensor(name):
    image = np.arange(1000, dtype=np.float32)
    content = image.tobytes() if name == "DT_FLOAT" else b"\x02\x01abc"
    proto = make(name, [2] if name == "DT_STRING" else [10, 100], tensor_content=content)
    alone = _CountingReads(proto)
    expected = to_numpy(proto)
    assert_same(to_numpy(alone), expected)
    assert alone.reads == 1
    # as gRPC's Predict decodes: the size for the request budget first, then the values
    checked = _CountingReads(proto)
    read = checked.tensor_content
    size = decoded_bytes(checked, content=read)
    assert_same(to_numpy(checked, size=size, content=read), expected)
    assert checked.reads == 1


# -- numpy -> proto -> numpy round trips --------------------------------------------------------

SAMPLES = {
    "DT_FLOAT": np.float32([[1.5, -0.0], [np.nan, np.inf]]),
    "DT_DOUBLE": np.float64([0.1, -1e308]),
    "DT_INT8": np.int8([-128, 127]),
    "DT_INT16": np.int16([-32768, 7]),
    "DT_INT32": np.int32([[-(2**31)], [2**31 - 1]]),
    "DT_INT64": np.int64([-(2**63), 2**63 - 1]),
    "DT_UINT8": np.uint8([0, 255]),
    "DT_UINT16": np.uint16([65535]),
    "DT_UINT32": np.uint32([2**32 - 1]),
    "DT_UINT64": np.uint64([2**64 - 1]),
    "DT_BOOL": np.array([True, False]),
    "DT_HALF": np.float16([0.5, -65504]),
    "DT_BFLOAT16": np.array([1.5, -2], dtype=DTYPE_NAMES["DT_BFLOAT16"]),
    "DT_COMPLEX64": np.complex64([1 + 2j, -3j]),
    "DT_COMPLEX128": np.complex128([1e300 + 2j]),
    "DT_STRING": np.array([b"a", b"", b"\x00\xff"], dtype=object),
}

FIELDS = {
    "DT_FLOAT": "float_val",
    "DT_DOUBLE": "double_val",
    "DT_INT8": "int_val",
    "DT_INT16": "int_val",
    "DT_INT32": "int_val",
    "DT_INT64": "int64_val",
    "DT_UINT8": "int_val",
    "DT_UINT16": "int_val",
    "DT_UINT32": "uint32_val",
    "DT_UINT64": "uint64_val",
    "DT_BOOL": "bool_val",
    "DT_HALF": "half_val",
    "DT_BFLOAT16": "half_val",
    "DT_COMPLEX64": "scomplex_val",
    "DT_COMPLEX128": "dcomplex_val",
    "DT_STRING": "string_val",
}


@pytest.mark.parametrize("name", list(SAMPLES))
def test_from_numpy_writes_typed_fields_like_as_proto_field(name):
    array = SAMPLES[name]
    proto = from_numpy(array)
    assert data_type_name(proto.dtype) == name
    assert [d.size for d in proto.tensor_shape.dim] == list(array.shape)
    assert not proto.tensor_content
    assert proto.ListFields()[-1][0].name == FIELDS[name]
    assert_same(to_numpy(proto), array)
    assert_same(tf_decode(proto), array)


@pytest.mark.parametrize("name", list(SAMPLES))
def test_from_numpy_tensor_content(name):
    array = SAMPLES[name]
    proto = from_numpy(array, tensor_content=True)
    if name == "DT_STRING":  # strings stay in string_val, the form every client reads
        assert list(proto.string_val) == array.tolist()
    else:
        assert proto.tensor_content == array.tobytes()
    assert_same(to_numpy(proto), array)
    assert_same(tf_decode(proto), array)


def test_from_numpy_scalar_and_empty():
    proto = from_numpy(np.float32(3.0))
    assert list(proto.tensor_shape.dim) == [] and list(proto.float_val) == [3.0]
    proto = from_numpy(np.zeros((2, 0), np.float32))
    assert [d.size for d in proto.tensor_shape.dim] == [2, 0]
    assert not proto.float_val
    assert_same(to_numpy(proto), np.zeros((2, 0), np.float32))


def test_from_numpy_strings_and_conversions():
    proto = from_numpy(np.array(["x", "é"]))
    assert list(proto.string_val) == [b"x", "é".encode()]
    proto = from_numpy(np.array([b"a", "b"], dtype=object), "DT_STRING")
    assert list(proto.string_val) == [b"a", b"b"]
    proto = from_numpy([1.7, 2.2], "DT_INT32")
    assert list(proto.int_val) == [1, 2]
    with pytest.raises(InvalidArgument, match="^DT_STRING values must be bytes or str, got int$"):
        from_numpy(np.array([1, b"a"], dtype=object))
    with pytest.raises(InvalidArgument, match="^cannot convert a <U1 array to DT_FLOAT"):
        from_numpy(np.array(["x"]), "DT_FLOAT")
    with pytest.raises(InvalidArgument, match="^unsupported tensor dtype: DT_NOPE$"):
        from_numpy(np.float32([1]), "DT_NOPE")


def test_from_numpy_fills_a_given_message():
    from tensorflow_serving.apis import predict_pb2

    response = predict_pb2.PredictResponse()
    response.outputs["y"].float_val.append(99)
    result = from_numpy(np.float32([1, 2]), out=response.outputs["y"])
    assert result is response.outputs["y"]
    assert list(response.outputs["y"].float_val) == [1, 2]


def test_make_tensor_proto_requests_decode_identically():
    arrays = [*SAMPLES.values(), np.float32(3.0), np.zeros((0, 3), np.int64)]
    arrays.append(np.random.default_rng(0).random((1, 224, 224, 3)).astype(np.float32))
    for array in arrays:
        if array.dtype == DTYPE_NAMES["DT_BFLOAT16"]:
            proto = tf.make_tensor_proto(tf.constant(array))
        else:
            proto = tf.make_tensor_proto(array)
        assert_same(to_numpy(proto), array)
    broadcast = tf.make_tensor_proto(1.5, shape=[2, 3])
    assert_same(to_numpy(broadcast), np.full((2, 3), 1.5, np.float32))


shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4)


@st.composite
def arrays(draw):
    name = draw(st.sampled_from(list(SAMPLES)))
    shape = draw(shapes)
    if name == "DT_STRING":
        count = int(np.prod(shape))
        values = draw(st.lists(st.binary(max_size=8), min_size=count, max_size=count))
        array = np.empty(count, dtype=object)
        array[:] = values
        return array.reshape(shape)
    dtype = DTYPE_NAMES[name]
    if name == "DT_BFLOAT16":
        bits = draw(hnp.arrays(np.uint16, shape))
        return bits.view(dtype)
    return draw(hnp.arrays(dtype, shape))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arrays(), st.booleans())
def test_round_trip_every_dtype(array, content):
    proto = from_numpy(array, tensor_content=content)
    decoded = to_numpy(tensor_pb2.TensorProto.FromString(proto.SerializeToString()))
    assert_same(decoded, array)


@settings(max_examples=100, deadline=None)
@given(arrays())
def test_tensorflow_agrees_on_our_protos(array):
    assert_same(tf_decode(from_numpy(array)), array)
