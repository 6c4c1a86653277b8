"""Shared test fixtures (the real test vectors, key material, one generated model per session:
TensorFlow is imported once, and only by the tests that need it) and the suite's tiers.

Tiers are pytest markers, assigned here rather than in each file (`pytest -m unit`):
- `e2e`: the product as a user runs it, across processes (the `sealserve` command, the demo,
  the cluster): the modules in `E2E_MODULES`;
- `integration`: real components: TensorFlow, servers on loopback (REST, gRPC, KBS),
  PostgreSQL, child processes: a test that uses a fixture in `INTEGRATION_FIXTURES`
  (directly or through another fixture), or whose own code names one of `STARTS` (it starts
  such a thing itself);
- `unit`: everything else: pure Python in-process, seconds for the whole tier.
A test may carry one of the three markers itself; then that one holds.
"""

from __future__ import annotations

import inspect
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.testvectors import TESTVECTORS  # noqa: F401 - importing checks they exist

TIERS = ("unit", "integration", "e2e")

E2E_MODULES = {
    "tests/test_attested_serving.py",
    "tests/test_attested_tls.py",
    "tests/test_brokered_tls.py",
    "tests/test_cli.py",
    "tests/test_cluster.py",
    "tests/test_demo.py",
    "tests/test_serve_cli.py",
}

# Fixtures that make a TensorFlow model, start a server or a database; the fixtures built on
# them (`server`, `kbs`, `client_plain_server`, ...) need not be listed.
INTEGRATION_FIXTURES = {
    "half_plus_two",
    "digits_model",
    "resnet50_model",
    "keras_wrapped_model",
    "frozen_graph",
    "kbs_module",
    "pg_url",
}

# Names in a test function's own code that start a real component (read from its source).
STARTS = re.compile(
    r"\b(subprocess|Popen|RunningServer|RunningKbs|ServeProcess|KbsProcess|start_kbs"
    r"|import_tensorflow|make_model|VersionLoader|ModelServer)\b"
)


def tier(item: pytest.Item) -> str:
    own = [m.name for m in item.iter_markers() if m.name in TIERS]
    if own:
        return own[0]
    module = Path(item.fspath).relative_to(Path(__file__).parent.parent).as_posix()
    if module in E2E_MODULES:
        return "e2e"
    if INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
        return "integration"
    function = getattr(item, "function", None)
    if function is not None and STARTS.search(inspect.getsource(function)):
        return "integration"
    return "unit"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(tier(item))


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
def half_plus_two_tf2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TF Serving's TF2 half_plus_two (tf.functions, `x` of shape [1]), shared (read-only)."""
    from sealserve.tools.models import make_model

    directory = tmp_path_factory.mktemp("models") / "half_plus_two_tf2"
    make_model("half_plus_two_tf2", directory)
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
