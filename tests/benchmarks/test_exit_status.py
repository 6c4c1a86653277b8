"""The benchmark scripts' exit status: non-zero when a judged target fails, after all results
are printed and written (benchmarks/serving.py as benchmarks/openvino_runtime.py). No
benchmark runs here: the rows are built by hand."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def serving(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # as the scripts import each other
    return importlib.import_module("serving")


def row(serving: Any, passed: bool | None) -> Any:
    return serving.Row("m", 1.0, "req/s", "ref", 1.0, 1.0, passed=passed)


@pytest.mark.parametrize(
    ("passed", "status"),
    [([], 0), ([None], 0), ([True, None], 0), ([True, False], 1), ([False, None, True], 1)],
    ids=["no-rows", "unjudged", "all-met", "one-missed", "missed-among-others"],
)
def test_serving_exits_1_when_a_judged_target_fails(
    serving: Any, passed: list[bool | None], status: int
) -> None:
    assert serving.exit_status([row(serving, p) for p in passed]) == status


def test_serving_main_exits_with_that_status_after_writing_its_results(serving: Any) -> None:
    body = ast.parse(inspect.getsource(serving.main)).body[0].body  # type: ignore[attr-defined]
    *_, write, last = body
    assert ast.unparse(last) == "sys.exit(exit_status(rows))"
    assert ast.unparse(write).startswith("write_results(")
