"""#12 §5 in-process: `forbid_core_dumps` in a fresh interpreter (the setting is per process
and cannot be undone, so never in the test process itself). The running attested server is
checked in tests/test_attested_serving.py::test_an_attested_server_cannot_dump_core."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sealserve.errors import FailedPrecondition
from sealserve.serving import hardening

CHILD = """
from sealserve.serving import hardening
assert hardening.dumpable() is True
hardening.forbid_core_dumps()
print(hardening.core_limit(), hardening.dumpable())
"""


def test_core_dumps_off_and_not_dumpable_in_a_fresh_process() -> None:
    result = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(0, 0) False"


def test_a_refused_setting_stops_an_attested_start_unless_in_an_enclave(monkeypatch) -> None:
    def refuse(*_args: object) -> int:
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(hardening, "_prctl", refuse)
    monkeypatch.setattr(hardening.resource, "setrlimit", lambda *_: None)
    with pytest.raises(FailedPrecondition, match="cannot make the process non-dumpable"):
        hardening.forbid_core_dumps()
    hardening.forbid_core_dumps(required=False)  # Gramine: logged only
