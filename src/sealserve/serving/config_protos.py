"""TF Serving's batching, monitoring and TLS config messages, for reading users' text protos.

The `tensorflow-serving-api` wheel ships neither `session_bundle_config.proto`'s
`BatchingParameters`, `monitoring_config.proto`'s `MonitoringConfig` nor
`ssl_config.proto`'s `SSLConfig`, so they are declared here, field for field (names,
numbers, types), and parsed with protobuf's own `text_format`: users'
`--batching_parameters_file`, `--monitoring_config_file` and `--ssl_config_file` mean exactly
what they mean to TF Serving, and a typo is a parse error, not a silently ignored field.
Thread safe.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    text_format,
    wrappers_pb2,  # noqa: F401 - registers wrappers.proto in the pool
)

from sealserve.errors import InvalidArgument
from sealserve.fsio import read_user_file

_T = descriptor_pb2.FieldDescriptorProto


@functools.cache
def _messages() -> dict[str, type[Any]]:
    file = descriptor_pb2.FileDescriptorProto(
        name="sealserve/tf_serving_configs.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )

    def message(name: str, fields: list[tuple[str, int, int, str, bool]]) -> None:
        proto = file.message_type.add(name=name)
        for field_name, number, kind, type_name, repeated in fields:
            field = proto.field.add(
                name=field_name,
                number=number,
                type=kind,
                label=_T.LABEL_REPEATED if repeated else _T.LABEL_OPTIONAL,
            )
            if type_name:  # only message fields name their type
                field.type_name = type_name

    int64_value, string_value = ".google.protobuf.Int64Value", ".google.protobuf.StringValue"
    message(
        "BatchingParameters",
        [  # session_bundle_config.proto
            ("max_batch_size", 1, _T.TYPE_MESSAGE, int64_value, False),
            ("batch_timeout_micros", 2, _T.TYPE_MESSAGE, int64_value, False),
            ("max_enqueued_batches", 3, _T.TYPE_MESSAGE, int64_value, False),
            ("num_batch_threads", 4, _T.TYPE_MESSAGE, int64_value, False),
            ("thread_pool_name", 5, _T.TYPE_MESSAGE, string_value, False),
            ("allowed_batch_sizes", 6, _T.TYPE_INT64, "", True),
            ("pad_variable_length_inputs", 7, _T.TYPE_BOOL, "", False),
        ],
    )
    message(
        "SSLConfig",
        [  # ssl_config.proto
            ("server_key", 1, _T.TYPE_STRING, "", False),
            ("server_cert", 2, _T.TYPE_STRING, "", False),
            ("custom_ca", 3, _T.TYPE_STRING, "", False),
            ("client_verify", 4, _T.TYPE_BOOL, "", False),
        ],
    )
    message(
        "PrometheusConfig",
        [  # monitoring_config.proto
            ("enable", 1, _T.TYPE_BOOL, "", False),
            ("path", 2, _T.TYPE_STRING, "", False),
        ],
    )
    message(
        "MonitoringConfig",
        [
            (
                "prometheus_config",
                1,
                _T.TYPE_MESSAGE,
                ".tensorflow.serving.PrometheusConfig",
                False,
            ),
        ],
    )
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.AddSerializedFile(file.SerializeToString())
    names = ("BatchingParameters", "MonitoringConfig", "SSLConfig")
    found = {name: pool.FindMessageTypeByName(f"tensorflow.serving.{name}") for name in names}
    return {name: message_factory.GetMessageClass(found[name]) for name in names}


def message(kind: str) -> Any:
    """An empty `BatchingParameters`, `MonitoringConfig` or `SSLConfig` message."""
    return _messages()[kind]()


def parse(kind: str, text: str, source: str) -> Any:
    """A `BatchingParameters` or `MonitoringConfig` message from its text format."""
    message = _messages()[kind]()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise InvalidArgument(f"{source}: {exc}") from None
    return message


def read(kind: str, path: str | Path, what: str) -> Any:
    raw = read_user_file(path, what)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument(f"{what} {path} is not text") from None
    return parse(kind, text, str(path))
