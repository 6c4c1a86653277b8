"""benchmarks/charts.py draws the benchmark scripts' comparisons as SVG, from results made
here in each script's own shapes (its Row, Measurement, Result, summarise), never from a
stored benchmark run; a malformed results file is one clear error; each script's `--charts`
is parsed and checked before anything runs."""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import asdict
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ["serving", "openvino_runtime", "protected_files", "kbs", "soak"]
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> Any:
    """`bench("charts")`: a module of benchmarks/, imported as the scripts import each other."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    return importlib.import_module


def measurement(serving: ModuleType, name: str, unit: str, rate: float, latencies: list[float]):  # noqa: ANN201
    m = serving.Measurement(name, unit)
    m.add(
        {
            "completed": int(rate * 10),
            "duration": 10.0,
            "errors": 0,
            "first_error": "",
            "latencies_ms": latencies,
            "server_cpu": 0.9,
        }
    )
    return m


def serving_results(serving: ModuleType) -> dict[str, Any]:
    """What serving.py writes with --json, built from its own types."""
    theirs = measurement(
        serving, "half_plus_two, KServe v1 REST, 16 clients", "req/s", 1100, [14.0, 17.0]
    )
    ours = measurement(
        serving, "half_plus_two, sealserve REST, 16 clients", "req/s", 3800, [4.0, 7.0]
    )
    local = measurement(serving, "ResNet-50 in-process, 1 thread", "images/s", 19.6, [50.0, 61.0])
    served = measurement(
        serving, "ResNet-50 served, mTLS gRPC, 1 client", "images/s", 19.2, [51.0, 82.0]
    )
    rows = [
        serving.ratio_row(
            served, local, "ResNet-50 served, 1 client", "in-process, 1 thread", 0.9, "in-process"
        ),
        serving.Row(
            "ResNet-50 start-up, encrypted",
            5.62,
            "s",
            "plain",
            5.06,
            1.11,
            "≤ 1.15× plain",
            passed=True,
        ),
        serving.ratio_row(
            ours, theirs, "half_plus_two, sealserve REST", "KServe v1 REST", 2.0, "KServe"
        ),
    ]
    return {
        "benchmark": "serving",
        "date": "2026-12-07 00:45 UTC",
        "results": [asdict(r) for r in rows],
        "measurements": [m.summary() for m in (local, served, theirs, ours)],
    }


def openvino_results(serving: ModuleType) -> dict[str, Any]:
    """openvino_runtime.py's shape: each served figure judged twice, under the same name."""
    tf = measurement(serving, "TensorFlow in-process, 1 thread", "images/s", 15.2, [64.0, 82.0])
    ov = measurement(serving, "OpenVINO bf16 in-process, 1 thread", "images/s", 171.8, [6.0, 9.0])
    served = measurement(serving, "OpenVINO bf16 served, 1 client", "images/s", 110.8, [9.0, 12.0])
    name = "ResNet-50 OpenVINO bf16, served, batch 1, 1 client"
    rows = [
        serving.ratio_row(served, tf, name, "TensorFlow in-process, 1 thread", 3.0, "TensorFlow"),
        serving.ratio_row(served, ov, name, "OpenVINO bf16 in-process", 0.9, "in-process"),
        serving.Row(
            "resident memory after serving, OpenVINO bf16",
            1188.0,
            "MiB",
            "TensorFlow",
            913.0,
            1.3,
            "≤ TensorFlow",
            passed=False,
        ),
        serving.Row(
            "start-up, encrypted, OpenVINO bf16",
            6.25,
            "s",
            "TensorFlow",
            6.6,
            0.95,
            "≤ TensorFlow + 5 s",
            passed=True,
        ),
    ]
    return {
        "date": "2026-12-07 00:49 UTC",  # no "benchmark" field: a file from before it existed
        "rows": [r.__dict__ for r in rows],
        "measurements": [m.summary() for m in (tf, ov, served)],
    }


def protected_files_results(protected_files: ModuleType) -> dict[str, Any]:
    pf = protected_files
    encrypt = pf.throughput("one-shot `AESGCM.encrypt` (reference)", 1 << 30, [1.0])
    rows = [
        encrypt,
        pf.throughput("`encrypt_file` (file → file)", 1 << 29, [1.0], reference=encrypt),
        pf.latency("`rekey_file` 100 MB, in place (node 0 only)", [0.0004, 0.0005, 0.0004]),
    ]
    return {"benchmark": "protected-files", "results": [asdict(r) for r in rows]}


def kbs_results(kbs: ModuleType) -> dict[str, Any]:
    def run(latencies: list[float]) -> dict[str, Any]:
        return {"latencies": latencies, "failures": 0}

    current = kbs.summarise([run([0.04, 0.05, 0.2])], 0.05)
    reference = kbs.summarise([run([0.05, 0.05, 0.3])], 0.06)
    return {
        "benchmark": "kbs",
        "clients": 4,
        "round_trips": {"current": current, "reference": reference},
        "releases_on_one_session": kbs.summarise([run([0.005] * 9)], 0.05),
        "startup": {
            "current": {"attestations": 1, "seconds": 0.12},
            "reference": {"attestations": 4, "seconds": 0.14},
        },
        "reference": "5866a80~1",
    }


def soak_results() -> dict[str, Any]:
    return {
        "benchmark": "soak",
        "seconds": 180.0,
        "clients": 64,
        "outcomes": {"REST ok": 259962, "gRPC ok": 127701, "malformed REST: 4xx": 28888},
        "rss_start": 671 << 20,
        "rss_end": 672 << 20,
        "passed": True,
    }


def all_results(bench: Any) -> dict[str, tuple[dict[str, Any], list[str]]]:
    """Each script's results and the row labels its charts must show."""
    serving = bench("serving")
    return {
        "serving": (
            serving_results(serving),
            ["ResNet-50 served, 1 client", "half_plus_two, sealserve REST", "KServe v1 REST"],
        ),
        "openvino": (
            openvino_results(serving),
            ["against OpenVINO bf16 in-process", "resident memory after serving, OpenVINO bf16"],
        ),
        "protected-files": (
            protected_files_results(bench("protected_files")),
            ["encrypt_file (file → file)", "one-shot AESGCM.encrypt", "rekey_file 100 MB"],
        ),
        "kbs": (kbs_results(bench("kbs")), ["round trips / s", "reference 5866a80~1"]),
        "soak": (soak_results(), ["resident memory at the end", "malformed REST: 4xx"]),
    }


def svg_text(path: Path) -> str:
    """The words an SVG shows (each line of a label is its own <text>), parsed as XML."""
    root = ET.parse(path).getroot()
    assert root.tag == f"{SVG}svg"
    return " ".join(" ".join(t.itertext()) for t in root.iter(f"{SVG}text"))


@pytest.mark.parametrize("kind", ["serving", "openvino", "protected-files", "kbs", "soak"])
def test_redrawing_saved_results_writes_valid_svgs_with_the_rows_labels(
    bench: Any, kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    payload, labels = all_results(bench)[kind]
    results = tmp_path / "results.json"
    results.write_text(json.dumps(payload, ensure_ascii=False))
    out = tmp_path / "charts"

    assert bench("charts").main([str(results), "--out", str(out)]) == 0

    printed = capsys.readouterr().out.split()
    assert sorted(printed) == [str(p) for p in sorted(out.iterdir())]
    shown = re.sub(r"\s+", " ", svg_text(out / f"{kind}.svg"))
    for label in labels:
        assert label in shown, f"{label!r} not in {kind}.svg"
    if kind in ("serving", "openvino", "kbs"):  # latencies were measured: p50 and p99 drawn
        assert printed == [str(out / f"{kind}.svg"), str(out / f"{kind}-latency.svg")]
        latencies = svg_text(out / f"{kind}-latency.svg")
        assert re.search(r"p50 \d+\.\d ms · p99 \d+\.\d ms", latencies)
    else:
        assert printed == [str(out / f"{kind}.svg")]


def test_charts_show_the_ratio_the_target_and_a_failure(bench: Any, tmp_path: Path) -> None:
    results = tmp_path / "openvino.json"
    results.write_text(json.dumps(openvino_results(bench("serving"))))
    bench("charts").main([str(results), "--out", str(tmp_path)])
    shown = svg_text(tmp_path / "openvino.svg")
    assert "7.29× · target ≥ 3.00× TensorFlow · pass" in shown
    assert "1.30× · target ≤ TensorFlow · FAIL" in shown


def test_labels_are_shown_as_written_not_as_tex(bench: Any, tmp_path: Path) -> None:
    payload = soak_results()
    payload["outcomes"] = {"from $1 to $2": 1, "a $\\frac{$ fraction": 2}
    results = tmp_path / "results.json"
    results.write_text(json.dumps(payload))
    assert bench("charts").main([str(results), "--out", str(tmp_path)]) == 0
    shown = svg_text(tmp_path / "soak.svg")
    for label in payload["outcomes"]:
        assert label in shown


def test_redrawing_the_same_results_gives_the_same_bytes_without_a_date(
    bench: Any, tmp_path: Path
) -> None:
    results = tmp_path / "results.json"
    results.write_text(json.dumps(serving_results(bench("serving"))))
    charts = bench("charts")
    charts.main([str(results), "--out", str(tmp_path / "a")])
    charts.main([str(results), "--out", str(tmp_path / "b")])
    for name in ("serving.svg", "serving-latency.svg"):
        first = (tmp_path / "a" / name).read_bytes()
        assert first == (tmp_path / "b" / name).read_bytes()
        assert b"<dc:date>" not in first
        assert b"<text" in first  # text stays text: no embedded glyph outlines


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        ("{", "not JSON"),
        ("[1, 2]", "expected an object"),
        ('{"hello": 1}', "not the results of a benchmark script"),
        ('{"benchmark": "serving", "results": [], "measurements": []}', "no results to draw"),
        (
            '{"benchmark": "serving", "measurements": [], "results": [{"measurement": "x", '
            '"value": "fast", "unit": "req/s", "reference": "y", "reference_value": 1}]}',
            "results[0]: 'value' must be a number",
        ),
        (
            '{"rows": [{"measurement": "x", "value": 1, "unit": "s", "reference": "y"}], '
            '"measurements": []}',
            "no field 'reference_value'",
        ),
        ('{"benchmark": "soak", "outcomes": {}, "rss_start": NaN}', "'rss_start' must be a number"),
        (b"\xff\xfe", "cannot read it"),
    ],
)
def test_a_malformed_results_file_is_one_clear_error(
    bench: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: str | bytes,
    complaint: str,
) -> None:
    results = tmp_path / "results.json"
    if isinstance(content, bytes):
        results.write_bytes(content)
    else:
        results.write_text(content)
    out = tmp_path / "charts"

    assert bench("charts").main([str(results), "--out", str(out)]) == 1

    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1, captured.err  # one line, no traceback
    assert captured.err.startswith(f"charts.py: error: {results}")
    assert complaint in captured.err
    assert not out.exists() or not any(out.iterdir())  # nothing half-drawn


def test_a_missing_results_file_and_an_output_that_is_a_file_are_refused(
    bench: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    charts = bench("charts")
    assert charts.main([str(tmp_path / "absent.json"), "--out", str(tmp_path)]) == 1
    assert "absent.json: cannot read it (No such file or directory)" in capsys.readouterr().err

    a_file = tmp_path / "file"
    a_file.write_text("")
    for out in (a_file, a_file / "charts"):
        with pytest.raises(SystemExit) as exit_:
            charts.main([str(a_file), "--out", str(out)])
        assert exit_.value.code == 2
        assert f"argument --out: {out} is not a directory" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("target", "reference", "expected"),
    [
        ("≥ 0.90× in-process", 28.0, 25.2),
        ("≤ 1.15× plain", 2.0, 2.3),
        ("≤ TensorFlow + 5 s", 6.6, 11.6),
        ("≤ TensorFlow", 913.0, 913.0),
        ("< 50 ms", None, 50.0),
        ("≥ 1,000 (idle machine)", None, 1000.0),
        ("—", 1.0, None),
        ("≥ 2.00× KServe", None, None),  # a ratio with nothing to multiply
        ("whatever the text", 1.0, None),
    ],
)
def test_the_target_mark_is_read_from_the_targets_text(
    bench: Any, target: str, reference: float | None, expected: float | None
) -> None:
    row = bench("charts").Comparison("x", 1.0, "u", "ref", reference, None, target)
    assert row.target_value() == pytest.approx(expected)


def test_a_script_writes_its_json_and_charts_from_one_payload(
    bench: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    payload = kbs_results(bench("kbs"))
    args = argparse.Namespace(json=tmp_path / "results.json", charts=tmp_path / "charts")

    bench("charts").write_results(payload, args)

    assert json.loads(args.json.read_text()) == payload
    assert capsys.readouterr().out.splitlines() == [
        f"chart: {tmp_path / 'charts' / 'kbs.svg'}",
        f"chart: {tmp_path / 'charts' / 'kbs-latency.svg'}",
    ]


@pytest.mark.parametrize("script", SCRIPTS)
def test_each_script_checks_its_charts_directory_before_it_runs(
    bench: Any,
    script: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    module = bench(script)
    assert "write_results(" in inspect.getsource(module.main)  # its --json payload is drawn
    a_file = tmp_path / "not-a-directory"
    a_file.write_text("")
    monkeypatch.setattr(sys, "argv", [f"{script}.py", "--charts", str(a_file)])

    with pytest.raises(SystemExit) as exit_:
        module.main()

    assert exit_.value.code == 2  # argparse's usage error: nothing was measured
    assert f"argument --charts: {a_file} is not a directory" in capsys.readouterr().err


def test_the_command_exits_non_zero_with_one_line_on_a_malformed_file(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    results.write_text('{"benchmark": "serving", "results": [{"measurement": 1}]}')
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "charts.py"), str(results), "--out", "x"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert (
        done.stderr
        == f"charts.py: error: {results}.results[0]: 'measurement' must be text, not 1\n"
    )
    assert not (tmp_path / "x").exists()
