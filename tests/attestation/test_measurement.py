"""The simulated measurement: code + launch configuration, canonical, sensitive to both."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sealserve.attestation.measurement import (
    HARMLESS_PYTHON_VARIABLES,
    code_manifest,
    installed_code_digest,
    measurement,
    python_environment,
    unmeasured_python_inputs,
)
from sealserve.errors import InvalidArgument, NotFound

LAUNCH = {"model_base_path": "/models/digits", "rest_api_port": 8501, "tls": True}


@pytest.fixture
def code(tmp_path: Path) -> Path:
    root = tmp_path / "sealserve"
    (root / "serving").mkdir(parents=True)
    (root / "__init__.py").write_text('"""fake package"""\n')
    (root / "serving" / "server.py").write_text("def serve():\n    pass\n")
    return root


def test_measurement_is_32_bytes_and_deterministic(code: Path) -> None:
    first = measurement(LAUNCH, code_root=code)
    assert len(first) == 32
    assert measurement(dict(reversed(list(LAUNCH.items()))), code_root=code) == first


def test_changing_a_code_file_changes_it(code: Path) -> None:
    before = measurement(LAUNCH, code_root=code)
    (code / "serving" / "server.py").write_text("def serve():\n    pass  # changed\n")
    assert measurement(LAUNCH, code_root=code) != before


def test_adding_or_renaming_a_file_changes_it(code: Path) -> None:
    before = installed_code_digest(code)
    (code / "extra.py").write_text("")
    added = installed_code_digest(code)
    assert added != before
    (code / "extra.py").rename(code / "other.py")
    assert installed_code_digest(code) not in (before, added)


def test_changing_the_launch_config_changes_it(code: Path) -> None:
    base = measurement(LAUNCH, code_root=code)
    for change in ({"tls": False}, {"rest_api_port": 8502}, {"extra": None}):
        assert measurement({**LAUNCH, **change}, code_root=code) != base
    assert measurement({}, code_root=code) != base


def test_bytecode_caches_do_not_count(code: Path) -> None:
    before = installed_code_digest(code)
    cache = code / "serving" / "__pycache__"
    cache.mkdir()
    (cache / "server.cpython-311.pyc").write_bytes(b"\x00" * 16)
    (code / "stray.pyc").write_bytes(b"\x01")
    assert installed_code_digest(code) == before


def test_manifest_is_sorted_relative_posix_paths(code: Path) -> None:
    paths = [path for path, _ in code_manifest(code)]
    assert paths == ["__init__.py", "serving/server.py"]


def test_a_copy_elsewhere_measures_the_same(code: Path, tmp_path: Path) -> None:
    copy = tmp_path / "elsewhere" / "sealserve"
    shutil.copytree(code, copy)
    assert measurement(LAUNCH, code_root=copy) == measurement(LAUNCH, code_root=code)


def test_the_installed_package_is_measured_by_default() -> None:
    digest = installed_code_digest()
    assert len(digest) == 32 and installed_code_digest() == digest
    paths = [path for path, _ in code_manifest()]
    assert "attestation/measurement.py" in paths
    assert not any("__pycache__" in p for p in paths)


@pytest.mark.parametrize(
    "config",
    [{"ratio": 0.5}, {1: "x"}, {"path": Path("/x")}, {"nested": {"b": b"x"}}],
    ids=["float", "int key", "Path", "bytes"],
)
def test_non_canonical_launch_configs_are_refused(code: Path, config: dict) -> None:
    with pytest.raises(InvalidArgument):
        measurement(config, code_root=code)


def test_missing_code_root(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        installed_code_digest(tmp_path / "missing")


# -- the Python environment (#12 §3) ------------------------------------------------------


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """This interpreter with only its installation on sys.path (pytest adds the checkout)
    and no code-changing PYTHON* variable."""
    import os
    import sys

    for name in list(os.environ):
        if name.startswith(("PYTHON", "LD_")) and name not in HARMLESS_PYTHON_VARIABLES:
            monkeypatch.delenv(name)
    roots = [os.path.realpath(p) for p in (sys.prefix, sys.base_prefix)]
    installed = [
        entry
        for entry in sys.path
        if entry and any(os.path.realpath(entry).startswith(root) for root in roots)
    ]
    monkeypatch.setattr(sys, "path", installed)
    return installed


def test_a_clean_installation_has_nothing_unmeasured(clean_environment: list[str]) -> None:
    assert unmeasured_python_inputs() == []
    environment = python_environment()
    assert environment["path"] == clean_environment
    assert environment["environment"] == {}
    assert python_environment() == environment  # deterministic


def test_code_changing_variables_are_measured_and_refused(
    clean_environment: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = measurement(LAUNCH)
    for name in (
        "PYTHONPATH",
        "PYTHONSTARTUP",
        "PYTHONHOME",
        "PYTHONWARNINGS",
        "PYTHONINSPECT",
        "LD_PRELOAD",
        "LD_AUDIT",
    ):
        with monkeypatch.context() as patch:
            patch.setenv(name, "/somewhere")
            assert measurement(LAUNCH) != before
            assert unmeasured_python_inputs() == [f"environment variable {name} is set"]
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")  # changes no code
    assert measurement(LAUNCH) == before and unmeasured_python_inputs() == []
    monkeypatch.setenv("LD_LIBRARY_PATH", "/opt/lib")  # measured, not refused (Gramine sets it)
    assert measurement(LAUNCH) != before and unmeasured_python_inputs() == []


def test_a_path_entry_outside_the_installation_is_refused(
    clean_environment: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    before = measurement(LAUNCH)
    monkeypatch.setattr(sys, "path", [str(tmp_path), *clean_environment])
    assert unmeasured_python_inputs() == [
        f"sys.path entry {tmp_path} is outside the measured installation"
    ]
    assert measurement(LAUNCH) != before
    monkeypatch.setattr(sys, "path", ["", *clean_environment])
    assert "the current directory is on sys.path" in unmeasured_python_inputs()[0]


def test_startup_files_are_measured_by_content(
    clean_environment: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """.pth files and sitecustomize/usercustomize run before any of our code."""
    import sys

    monkeypatch.setattr(sys, "path", [*clean_environment, str(tmp_path)])
    monkeypatch.delitem(sys.modules, "sitecustomize", raising=False)
    monkeypatch.delitem(sys.modules, "usercustomize", raising=False)
    before = measurement(LAUNCH)
    for name in ("extra.pth", "usercustomize.py"):
        (tmp_path / name).write_text("import os\n")
        with_file = measurement(LAUNCH)
        assert with_file != before
        (tmp_path / name).write_text("import sys\n")
        assert measurement(LAUNCH) not in (before, with_file)
        (tmp_path / name).unlink()
        assert measurement(LAUNCH) == before
    listed = [path for path, _ in python_environment()["startup_files"]]
    assert not any(path.startswith(str(tmp_path)) for path in listed)


def test_the_interpreter_binary_is_measured(clean_environment: list[str]) -> None:
    import os
    import sys

    files = [path for path, _ in python_environment()["interpreter"]]
    assert files[0] == os.path.realpath(sys.executable)
