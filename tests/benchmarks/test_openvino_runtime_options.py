"""benchmarks/openvino_runtime.py's options that narrow a run (`--runtimes`, `--clients`):
a non-empty subset of the full run's values, kept in the full run's order, or one clear
argparse error. No benchmark runs here."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def openvino_runtime(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # as the scripts import each other
    return importlib.import_module("openvino_runtime")


def test_a_subset_keeps_the_full_runs_order(openvino_runtime: Any) -> None:
    runtimes = openvino_runtime._subset(openvino_runtime.RUNTIMES[1:])
    assert runtimes("openvino:bf16, openvino") == ("openvino", "openvino:bf16")
    assert runtimes("openvino:bf16") == ("openvino:bf16",)
    clients = openvino_runtime._subset(tuple(map(str, openvino_runtime.CLIENTS)))
    assert clients("4,1") == ("1", "4")


@pytest.mark.parametrize("text", ["", ",", "tensorflow", "openvino,openvino:int8"])
def test_anything_else_is_refused(openvino_runtime: Any, text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="non-empty subset of openvino,"):
        openvino_runtime._subset(openvino_runtime.RUNTIMES[1:])(text)


def test_the_command_line_names_the_option_and_exits_2() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "openvino_runtime.py"), "--clients", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    assert "argument --clients: a non-empty subset of 1,4" in done.stderr
    assert "Traceback" not in done.stderr
