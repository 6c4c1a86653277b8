"""Session-wide model trees and one shared plaintext server for the API tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sealserve.model_tree import encrypt_tree
from sealserve.serving.keys import StaticKeyProvider
from sealserve.serving.model_config import ModelConfig
from sealserve.serving.version_policy import VersionPolicy
from tests.harness import RunningServer, server_options

SECRET_KEY = bytes(range(16))


@pytest.fixture(scope="session")
def model_root(tmp_path_factory: pytest.TempPathFactory, half_plus_two: Path) -> Path:
    """half_plus_two plain with versions 1 and 2, and encrypted (`secret_h2`)."""
    root = tmp_path_factory.mktemp("model_root")
    for version in ("1", "2"):
        shutil.copytree(half_plus_two, root / "half_plus_two" / version)
    encrypt_tree(half_plus_two, str(root / "secret_h2" / "1"), SECRET_KEY)
    return root


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
