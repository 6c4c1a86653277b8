"""Session-wide model trees and one shared plaintext server for the API tests."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

from sealserve.model_tree import encrypt_tree
from sealserve.serving.keys import StaticKeyProvider
from sealserve.serving.loader import LoadOptions
from sealserve.serving.manager import ManagerOptions
from sealserve.serving.model_config import ModelConfig
from sealserve.serving.rest import RestOptions
from sealserve.serving.server import ServerOptions
from sealserve.serving.version_policy import VersionPolicy
from tests.serving.harness import RunningServer

SECRET_KEY = bytes(range(16))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def model_root(tmp_path_factory: pytest.TempPathFactory, half_plus_two: Path) -> Path:
    """half_plus_two plain with versions 1 and 2, and encrypted (`secret_h2`)."""
    root = tmp_path_factory.mktemp("model_root")
    for version in ("1", "2"):
        shutil.copytree(half_plus_two, root / "half_plus_two" / version)
    encrypt_tree(half_plus_two, str(root / "secret_h2" / "1"), SECRET_KEY)
    return root


def server_options(models: list[ModelConfig], **overrides: object) -> ServerOptions:
    settings: dict[str, object] = dict(
        models=models,
        grpc_port=0,
        rest_port=free_port(),
        bind_address="127.0.0.1",
        manager=ManagerOptions(load=LoadOptions(), poll_seconds=0.2, max_load_retries=0),
        rest=RestOptions(max_body_bytes=1 << 20),
        grpc_max_message_bytes=4 << 20,
        grpc_health_check=True,
        inference_threads=4,
    )
    settings.update(overrides)
    return ServerOptions(**settings)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def server(model_root: Path):
    models = [
        ModelConfig(
            "half_plus_two",
            str(model_root / "half_plus_two"),
            VersionPolicy(kind="all"),
            {"stable": 1, "canary": 2},
        ),
        ModelConfig("secret_h2", str(model_root / "secret_h2")),
    ]
    running = RunningServer(server_options(models), StaticKeyProvider({"secret_h2": SECRET_KEY}))
    yield running
    running.stop()
