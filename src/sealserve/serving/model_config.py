"""The models to serve: from `--model_name/--model_base_path` or TF Serving's
`--model_config_file` (text proto `ModelServerConfig { model_config_list { config {...} } }`).

Parsed with TF Serving's own protos, so users bring their files unchanged. `model_platform`
picks the runtime ("tensorflow", the default, or "openvino[:options]": see `runtimes`).
Produces plain `ModelConfig` values; nothing here loads anything. Thread safe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sealserve.errors import InvalidArgument, NotFound
from sealserve.serving.runtimes import DEFAULT_RUNTIME, RuntimeSpec, parse_runtime
from sealserve.serving.version_policy import LATEST_ONE, VersionPolicy


@dataclass(frozen=True)
class ModelConfig:
    name: str
    base_path: str
    version_policy: VersionPolicy = LATEST_ONE
    version_labels: dict[str, int] = field(default_factory=dict)
    runtime: RuntimeSpec = DEFAULT_RUNTIME


def single_model(
    name: str, base_path: str, runtime: RuntimeSpec = DEFAULT_RUNTIME
) -> list[ModelConfig]:
    if not name:
        raise InvalidArgument("--model_name must not be empty")
    return [ModelConfig(name=name, base_path=base_path, runtime=runtime)]


def parse_model_config_text(text: str, source: str) -> list[ModelConfig]:
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    message = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise InvalidArgument(f"{source}: {exc}") from None
    return from_proto(message, source)


def from_proto(message: object, source: str) -> list[ModelConfig]:
    """ModelConfig values from a `ModelServerConfig` proto (a config file or a
    `ReloadConfigRequest`); only `model_config_list` is accepted, as in TF Serving."""
    if message.WhichOneof("config") != "model_config_list":  # type: ignore[attr-defined]
        raise InvalidArgument(f"{source}: only model_config_list is supported")
    models: list[ModelConfig] = []
    for config in message.model_config_list.config:  # type: ignore[attr-defined]
        if not config.name:
            raise InvalidArgument(f"{source}: a model config has no name")
        if not config.base_path:
            raise InvalidArgument(f"{source}: model {config.name} has no base_path")
        runtime = parse_runtime(config.model_platform, f"{source}: model {config.name}")
        models.append(
            ModelConfig(
                name=config.name,
                base_path=config.base_path,
                version_policy=_policy(config.model_version_policy),
                version_labels=dict(config.version_labels),
                runtime=runtime,
            )
        )
    names = [m.name for m in models]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise InvalidArgument(f"{source}: model {duplicated[0]} is configured twice")
    return models


def _policy(proto: object) -> VersionPolicy:
    kind = proto.WhichOneof("policy_choice")  # type: ignore[attr-defined]
    if kind == "all":
        return VersionPolicy(kind="all")
    if kind == "specific":
        versions = frozenset(proto.specific.versions)  # type: ignore[attr-defined]
        if not versions:
            raise InvalidArgument("a specific version policy lists no versions")
        return VersionPolicy(kind="specific", versions=versions)
    if kind == "latest":
        return VersionPolicy(num_versions=max(1, proto.latest.num_versions))  # type: ignore[attr-defined]
    return LATEST_ONE


def read_model_config_file(path: str) -> list[ModelConfig]:
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise NotFound(f"model config file {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"cannot read model config file {path}: {exc}") from None
    return parse_model_config_text(text, path)
