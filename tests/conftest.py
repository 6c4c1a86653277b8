"""Shared test fixtures: the real test vectors, key material, and one generated model per
session (TensorFlow is imported once, and only by the tests that need it)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.testvectors import TESTVECTORS  # noqa: F401 - importing checks they exist


@pytest.fixture
def wrap_key() -> bytes:
    return os.urandom(16)


@pytest.fixture
def key_file(tmp_path: Path, wrap_key: bytes) -> Path:
    path = tmp_path / "wrap-key"
    path.write_bytes(wrap_key)
    path.chmod(0o600)
    return path


@pytest.fixture(scope="session")
def half_plus_two(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated half_plus_two SavedModel, shared by the session (read-only)."""
    from sealserve.tools.models import make_model

    directory = tmp_path_factory.mktemp("models") / "half_plus_two"
    make_model("half_plus_two", directory)
    return directory


@pytest.fixture(scope="session")
def digits_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated digits SavedModel (trained at generation), shared by the session
    (read-only)."""
    from sealserve.tools.models import make_model

    directory = tmp_path_factory.mktemp("models") / "digits"
    make_model("digits", directory)
    return directory


@pytest.fixture(scope="session")
def resnet50_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A generated resnet50 SavedModel, shared by the session (read-only); its 100 MB are
    removed at the end of the session rather than kept among pytest's last temporaries."""
    from sealserve.tools.models import make_model

    directory = tmp_path_factory.mktemp("models") / "resnet50"
    make_model("resnet50", directory)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)
