"""The models to serve: from `--model_name/--model_base_path` or TF Serving's
`--model_config_file` (text proto `ModelServerConfig { model_config_list { config {...} } }`).

Parsed with TF Serving's own protos, so users bring their files unchanged. `model_platform`
picks the runtime ("tensorflow", the default, or "openvino[:options]": see `runtimes`).
Produces plain `ModelConfig` values; nothing here loads anything. Thread safe.

A reload may not change a model's platform (TF Serving's rule, with its words): the versions
already loaded would go on running on the old runtime while the config claimed the new one.
`check_no_platform_changes` decides on the parsed runtimes, so equivalent spellings
("", "TensorFlow"; "openvino" and "OpenVINO:fp32,latency") are no change.

`ModelTrust` says, per model name, what a version must be to be served: a tree authenticated
by the model's key (every model with a key: `--model_key`, or all of them with a key broker),
or a plain SavedModel (only models without a key; with a key broker, only those named by
`--insecure_plain_model`), plus the owner's pins (`--model_pin`: model id, minimum version).
It comes from flags, which the measurement covers, never from the model config file or a
reload request, which the host controls; it applies by name to models added by a reload too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
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
    #: `model_platform` as the config spelled it ("": not given), for messages only
    platform_text: str = field(default="", compare=False)

    @property
    def platform(self) -> str:
        """The platform as the operator wrote it (the runtime's own spelling if not given)."""
        return self.platform_text or str(self.runtime)


def same_runtime(a: RuntimeSpec, b: RuntimeSpec) -> bool:
    """Whether two parsed `model_platform`s run a model the same way: defaults written out
    or left out, case and option order make no difference."""
    return _effective(a) == _effective(b)


def _effective(spec: RuntimeSpec) -> RuntimeSpec:
    error, agreement = spec.bounds
    return dataclasses.replace(spec, max_relative_error=error, min_top1_agreement=agreement)


def check_no_platform_changes(current: Iterable[ModelConfig], new: Iterable[ModelConfig]) -> None:
    """Raise `InvalidArgument` if a model in both lists would run on another runtime (or the
    same runtime with other settings): TF Serving refuses such a reload, and so do we,
    keeping the old config in force. Models added or removed may name any platform."""
    old = {config.name: config for config in current}
    for config in new:
        before = old.get(config.name)
        if before is not None and not same_runtime(before.runtime, config.runtime):
            raise InvalidArgument(
                f"Illegal to change a model's platform. For model {config.name} platform was "
                f"{before.platform} and new platform requested is {config.platform}"
            )


@dataclass(frozen=True)
class ModelPin:
    """What the owner pins for a model: its manifest's model id, and the lowest version that
    may be served (older, consistent trees are a rollback)."""

    model_id: str | None = None
    min_version: int = 0

    def merged(self, other: ModelPin | None) -> ModelPin:
        """Both pins at once (the stricter minimum); conflicting ids pin nothing servable."""
        if other is None:
            return self
        if self.model_id and other.model_id and self.model_id != other.model_id:
            raise InvalidArgument(
                f"conflicting model id pins {self.model_id!r} and {other.model_id!r}"
            )
        return ModelPin(self.model_id or other.model_id, max(self.min_version, other.min_version))


@dataclass(frozen=True)
class ModelTrust:
    """Which models are keyed (only authenticated trees) and which may be plain."""

    keyed_models: frozenset[str] = frozenset()
    every_model_keyed: bool = False  # a key broker: every model has a key unless plain
    plain_models: frozenset[str] = frozenset()  # --insecure_plain_model (key broker only)
    pins: dict[str, ModelPin] = field(default_factory=dict)

    def __post_init__(self) -> None:
        both = sorted(self.keyed_models & self.plain_models)
        if both:
            raise InvalidArgument(f"model {both[0]} has a key and is marked plain")

    def keyed(self, name: str) -> bool:
        if name in self.plain_models:
            return False
        return self.every_model_keyed or name in self.keyed_models

    def pin(self, name: str) -> ModelPin:
        return self.pins.get(name, ModelPin())


def parse_model_pin(flag: str) -> tuple[str, ModelPin]:
    """`NAME=MODEL_ID[:MIN_VERSION]` (MODEL_ID may be `*`: any) -> (name, pin)."""
    name, sep, rest = flag.partition("=")
    model_id, _, minimum = rest.partition(":")
    if not sep or not name or not model_id:
        raise InvalidArgument(f"--model_pin must be NAME=MODEL_ID[:MIN_VERSION], got {flag!r}")
    try:
        min_version = int(minimum) if minimum else 0
    except ValueError:
        raise InvalidArgument(
            f"--model_pin {flag!r}: the minimum version is not a number"
        ) from None
    if min_version < 0:
        raise InvalidArgument(f"--model_pin {flag!r}: the minimum version is negative")
    return name, ModelPin(None if model_id == "*" else model_id, min_version)


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
                platform_text=config.model_platform.strip(),
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
