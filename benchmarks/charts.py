"""Charts of the benchmark scripts' side-by-side comparisons, as SVG files.

Every script under `benchmarks/` judges a figure against a reference measured in the same run;
this module draws those comparisons from the results the scripts write with `--json` (and
draw themselves with `--charts DIR`):

- `<benchmark>.svg`: per row, the measured value and its reference as two bars, the target
  as a vertical mark, and the ratio, the target and pass/FAIL written beside them; one panel
  per unit (images/s, req/s, s, MiB, ...), since their scales have nothing in common;
- `<benchmark>-latency.svg`, where latencies were measured: p50 and p99 per measurement.

Redraw from saved results without running anything again:

    .venv/bin/python benchmarks/charts.py results.json [more.json ...] --out docs/benchmarks

The results' shapes are those of serving.py, openvino_runtime.py, protected_files.py, kbs.py
and soak.py (recognised by their `benchmark` field or, in older files, by their keys). A file
that is not one of them is one clear error and a non-zero exit. Drawing is deterministic:
the same results give the same bytes (see sealserve.client.plot.save_figure), so redrawing
unchanged data leaves no diff. Not thread safe (matplotlib's pyplot state).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import textwrap
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KINDS = ("serving", "openvino", "protected-files", "kbs", "soak")
MEASURED_COLOUR = "tab:blue"
REFERENCE_COLOUR = "tab:gray"
P50_COLOUR, P99_COLOUR = "tab:blue", "lightsteelblue"
FAIL_COLOUR = "tab:red"
LABEL_WIDTH = 50  # characters per line of a row's label
COUNTED = ("requests", "attestations")  # units of whole numbers
ROW_INCHES = 0.62  # height of one compared row (its two bars and their gap)


class ChartError(ValueError):
    """Results that cannot be drawn (not a benchmark's results file, a missing field)."""


# sealserve.client.plot is imported where it is used: kbs.py's client processes import this
# module too, with another code tree's sealserve (its --reference) on their path


def _pyplot() -> Any:
    from sealserve.client.plot import pyplot

    return pyplot()


@dataclass(frozen=True)
class Comparison:
    """One row: a measured value against its reference (either may stand alone)."""

    label: str
    value: float
    unit: str
    reference: str | None = None
    reference_value: float | None = None
    ratio: float | None = None
    target: str = "—"
    passed: bool | None = None

    def target_value(self) -> float | None:
        """Where the target lies on the value axis, read from the target's text, e.g.
        "≥ 0.90× in-process" (0.9 × reference), "≤ TensorFlow + 5 s" (reference + 5),
        "≤ TensorFlow" (the reference), "< 50 ms" or "≥ 100 (idle machine)" (50, 100);
        None when there is none ("—") or the text says something else."""
        text = self.target.replace(",", "").strip()
        if not text or text[0] not in "≥≤<>=":
            return None
        rest = text.lstrip("≥≤<>= ")
        if factor := re.match(r"([\d.]+)\s*×", rest):
            if self.reference_value is None:
                return None
            return float(factor.group(1)) * self.reference_value
        if absolute := re.match(r"([\d.]+)(?:\s|$)", rest):
            return float(absolute.group(1))
        if self.reference_value is None:
            return None
        if extra := re.search(r"\+\s*([\d.]+)", rest):
            return self.reference_value + float(extra.group(1))
        return self.reference_value


@dataclass(frozen=True)
class Latency:
    """The p50 and p99 latency of one measurement; `group` keeps like with like."""

    label: str
    group: str
    p50_ms: float
    p99_ms: float


@dataclass(frozen=True)
class Results:
    """What a results file holds for drawing."""

    kind: str
    title: str
    comparisons: list[Comparison]
    latencies: list[Latency]


# -- reading results ------------------------------------------------------------------------


class _Fields:
    """Typed access to one JSON object, each missing or mistyped field one clear error."""

    def __init__(self, value: object, where: str) -> None:
        if not isinstance(value, dict):
            raise ChartError(f"{where}: expected an object, found {type(value).__name__}")
        self.data: dict[str, Any] = value
        self.where = where

    def _get(self, key: str, optional: bool) -> Any:
        if key not in self.data:
            if optional:
                return None
            raise ChartError(f"{self.where}: no field '{key}'")
        return self.data[key]

    def number(self, key: str, *, optional: bool = False) -> float | None:
        value = self._get(key, optional)
        if value is None and optional:
            return None
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise ChartError(f"{self.where}: '{key}' must be a number, not {value!r}")
        return float(value)

    def required_number(self, key: str) -> float:
        value = self.number(key)
        assert value is not None
        return value

    def text(self, key: str, *, optional: bool = False) -> str | None:
        value = self._get(key, optional)
        if value is None and optional:
            return None
        if not isinstance(value, str):
            raise ChartError(f"{self.where}: '{key}' must be text, not {value!r}")
        return value

    def required_text(self, key: str) -> str:
        value = self.text(key)
        assert value is not None
        return value

    def flag(self, key: str) -> bool | None:
        value = self._get(key, optional=True)
        if value is not None and not isinstance(value, bool):
            raise ChartError(f"{self.where}: '{key}' must be true, false or null, not {value!r}")
        return value

    def object(self, key: str, *, optional: bool = False) -> _Fields | None:
        value = self._get(key, optional)
        if value is None and optional:
            return None
        return _Fields(value, f"{self.where}.{key}")

    def items(self, key: str) -> list[_Fields]:
        value = self._get(key, optional=False)
        if not isinstance(value, list):
            raise ChartError(f"{self.where}: '{key}' must be a list")
        return [_Fields(item, f"{self.where}.{key}[{i}]") for i, item in enumerate(value)]


def kind_of(payload: dict[str, Any], where: str) -> str:
    """Which script wrote `payload`: its `benchmark` field, or (older files) its keys."""
    kind = payload.get("benchmark")
    if kind is None:
        if "rows" in payload:
            kind = "openvino"
        elif "round_trips" in payload:
            kind = "kbs"
        elif "outcomes" in payload:
            kind = "soak"
        elif isinstance(payload.get("results"), list) and payload["results"]:
            first = payload["results"][0]
            kind = "protected-files" if isinstance(first, dict) and "operation" in first else None
            kind = kind or "serving"
    if kind not in KINDS:
        raise ChartError(
            f"{where}: not the results of a benchmark script (serving.py, openvino_runtime.py, "
            "protected_files.py, kbs.py or soak.py with --json)"
        )
    return kind


def _row(item: _Fields) -> Comparison:
    """A row as serving.py and openvino_runtime.py write it (their `Row`)."""
    return Comparison(
        label=item.required_text("measurement"),
        value=item.required_number("value"),
        unit=item.required_text("unit"),
        reference=item.required_text("reference"),
        reference_value=item.required_number("reference_value"),
        ratio=item.number("ratio", optional=True),
        target=item.text("target", optional=True) or "—",
        passed=item.flag("passed"),
    )


def _latencies(measurements: Iterable[_Fields]) -> list[Latency]:
    found = []
    for m in measurements:
        latency = m.object("latency_ms", optional=True)
        if latency is None or latency.data.get("p50") is None:
            continue
        found.append(
            Latency(
                m.required_text("name"),
                m.required_text("unit"),
                latency.required_number("p50"),
                latency.required_number("p99"),
            )
        )
    return found


def _dated(title: str, payload: _Fields) -> str:
    date = payload.text("date", optional=True)
    return f"{title}, {date}" if date else title


def _serving(payload: _Fields) -> Results:
    return Results(
        "serving",
        _dated("Serving: sealserve against references measured in the same run", payload),
        [_row(item) for item in payload.items("results")],
        _latencies(payload.items("measurements")),
    )


def _openvino(payload: _Fields) -> Results:
    rows = [_row(item) for item in payload.items("rows")]
    # each served figure is judged twice (against TensorFlow, against in-process OpenVINO):
    # one label per row, so the reference goes into it
    labels = [r.label for r in rows]
    rows = [
        Comparison(**{**r.__dict__, "label": f"{r.label}, against {r.reference}"})
        if labels.count(r.label) > 1
        else r
        for r in rows
    ]
    return Results(
        "openvino",
        _dated("OpenVINO runtime against TensorFlow and in-process OpenVINO", payload),
        rows,
        _latencies(payload.items("measurements")),
    )


def _protected_files(payload: _Fields) -> Results:
    """Each throughput against the one-shot AES-GCM reference of its direction, the row
    just before it marked "(reference)"; the rekey times stand alone against their limit."""
    rows: list[Comparison] = []
    reference: tuple[str, float] | None = None
    for item in payload.items("results"):
        operation = item.required_text("operation")
        value = item.required_number("value")
        unit = item.required_text("unit")
        ratio = item.number("ratio", optional=True)
        if "(reference)" in operation:
            reference = (operation.replace("(reference)", "").strip(), value)
            continue
        compared = ratio is not None and reference is not None
        rows.append(
            Comparison(
                operation.replace("`", ""),
                value,
                unit,
                reference=reference[0].replace("`", "") if compared and reference else None,
                reference_value=reference[1] if compared and reference else None,
                ratio=ratio if compared else None,
                target=item.text("target", optional=True) or "—",
                passed=item.flag("passed"),
            )
        )
    return Results(
        "protected-files",
        _dated("Protected files against one-shot AES-GCM", payload),
        rows,
        [],
    )


def _kbs(payload: _Fields) -> Results:
    trips = payload.object("round_trips")
    assert trips is not None
    current = trips.object("current")
    assert current is not None
    reference = trips.object("reference", optional=True)
    ref_name = f"reference {payload.text('reference', optional=True) or ''}".strip()
    rate = current.required_number("per_second")
    rows = []
    if reference is not None:
        ref_rate = reference.required_number("per_second")
        ratio = rate / ref_rate if ref_rate else None
        rows.append(
            Comparison(
                "round trips / s (attest + release, a new session each)",
                rate,
                "per s",
                ref_name,
                ref_rate,
                ratio,
                "≥ 0.95× reference",
                None if ratio is None else ratio >= 0.95,
            )
        )
    else:
        target = payload.number("target_per_second", optional=True) or 100
        rows.append(
            Comparison(
                "round trips / s (attest + release, a new session each)",
                rate,
                "per s",
                target=f"≥ {target:g}",
                passed=rate >= target,
            )
        )
    session = payload.object("releases_on_one_session")
    assert session is not None
    releases = session.required_number("per_second")
    rows.append(
        Comparison(
            "releases / s on one attested session",
            releases,
            "per s",
            "round trips, a new session each",
            rate,
            releases / rate if rate else None,
        )
    )
    startup = payload.object("startup")
    assert startup is not None
    mine = startup.object("current")
    assert mine is not None
    theirs = startup.object("reference", optional=True)
    attestations = mine.required_number("attestations")
    ref_attestations = theirs.required_number("attestations") if theirs else None
    rows.append(
        Comparison(
            "start-up: attestations for 3 model keys + the TLS key",
            attestations,
            "attestations",
            ref_name if theirs else None,
            ref_attestations,
            attestations / ref_attestations if ref_attestations else None,
            "≤ 1",
            attestations <= 1,
        )
    )
    latencies = [
        Latency(f"round trip, {label}", "round trips", tree.required_number("p50_ms"), p99)
        for label, tree in (("current", current), (ref_name, reference))
        if tree is not None and (p99 := tree.required_number("p99_ms")) is not None
    ]
    return Results("kbs", "Key broker: the current code against a reference", rows, latencies)


def _soak(payload: _Fields) -> Results:
    start = payload.required_number("rss_start") / 2**20
    end = payload.required_number("rss_end") / 2**20
    rows = [
        Comparison(
            "resident memory at the end",
            end,
            "MiB",
            "after warm-up",
            start,
            end / start if start else None,
            "< 1.10× after warm-up",
            end < 1.10 * start,
        )
    ]
    outcomes = payload.object("outcomes")
    assert outcomes is not None
    for kind in sorted(outcomes.data):
        # soak.py's own rule: an outcome named so is a request that should not have failed
        unexpected = any(word in kind for word in ("FAILED", "UNEXPECTED", "WRONG"))
        rows.append(
            Comparison(kind, outcomes.required_number(kind), "requests", passed=not unexpected)
        )
    seconds = payload.required_number("seconds")
    return Results("soak", f"Soak: {seconds / 60:.0f} minutes of mixed traffic", rows, [])


READERS: dict[str, Callable[[_Fields], Results]] = {
    "serving": _serving,
    "openvino": _openvino,
    "protected-files": _protected_files,
    "kbs": _kbs,
    "soak": _soak,
}


def results_of(payload: object, where: str = "results") -> Results:
    """The comparisons and latencies in `payload` (a benchmark's `--json` object)."""
    fields = _Fields(payload, where)
    results = READERS[kind_of(fields.data, where)](fields)
    if not results.comparisons:
        raise ChartError(f"{where}: no results to draw")
    return results


def load(path: Path) -> Results:
    """Read a results file; a missing, unreadable or malformed one is a ChartError."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or "not UTF-8 text"
        raise ChartError(f"{path}: cannot read it ({reason})") from None
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as error:
        raise ChartError(f"{path}: not JSON ({error.msg} at line {error.lineno})") from None
    return results_of(payload, str(path))


# -- drawing --------------------------------------------------------------------------------


def _number(value: float, unit: str) -> str:
    if unit in ("s", "ms"):
        return f"{value:.2f} {unit}"
    whole = unit in COUNTED or abs(value) >= 100
    return f"{value:,.{0 if whole else 1}f} {unit}"


def _wrap(text: str) -> str:
    return "\n".join(textwrap.wrap(text, LABEL_WIDTH)) or text


def _by(items: list[Any], key: Callable[[Any], str]) -> list[tuple[str, list[Any]]]:
    """`items` grouped by `key`, groups in order of first appearance."""
    groups: dict[str, list[Any]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return list(groups.items())


def _verdict(row: Comparison) -> str:
    parts = []
    if row.ratio is not None:
        parts.append(f"{row.ratio:.2f}×")
    if row.target != "—":
        parts.append(f"target {row.target}")
    if row.passed is not None:
        parts.append("pass" if row.passed else "FAIL")
    return " · ".join(parts)


def _stacked_panels(plt: Any, heights: list[float], title: str) -> tuple[Any, Any]:
    """A titled figure of panels stacked in one column, each as tall as `heights` says."""
    figure, axes = plt.subplots(
        len(heights),
        1,
        figsize=(11, sum(heights) + 0.9),
        height_ratios=heights,
        layout="constrained",
        squeeze=False,
    )
    figure.suptitle(title)
    return figure, axes


def draw_comparisons(results: Results) -> Any:
    """The figure of `results.comparisons`: one panel per unit, two bars per row."""
    plt = _pyplot()
    groups = _by(results.comparisons, lambda row: row.unit)
    heights = [max(1.2, ROW_INCHES * len(rows) + 0.5) for _, rows in groups]
    figure, axes = _stacked_panels(plt, heights, results.title)
    for panel, (unit, rows) in zip(axes[:, 0], groups, strict=True):
        _comparison_panel(panel, unit, rows)
    handles = [
        plt.Rectangle((0, 0), 1, 1, color=MEASURED_COLOUR, label="measured"),
        plt.Rectangle((0, 0), 1, 1, color=REFERENCE_COLOUR, label="reference (same run)"),
        plt.Line2D([], [], color="black", linewidth=2, label="target"),
    ]
    figure.legend(handles=handles, loc="outside lower center", ncols=3, frameon=False)
    return figure


def _comparison_panel(panel: Any, unit: str, rows: list[Comparison]) -> None:
    top = len(rows) - 1
    widest = max(
        [r.value for r in rows]
        + [r.reference_value or 0 for r in rows]
        + [r.target_value() or 0 for r in rows]
    )
    for index, row in enumerate(rows):
        y = top - index  # the first row on top, as in the tables
        pair = row.reference_value is not None
        offset = 0.19 if pair else 0.0
        mark = row.target_value()
        panel.barh(y + offset, row.value, height=0.36, color=MEASURED_COLOUR)
        text = _number(row.value, unit)
        if verdict := _verdict(row):
            text += f"   {verdict}"
        colour = FAIL_COLOUR if row.passed is False else "black"
        # the labels start right of the bar and of the target mark, which would cross them
        panel.annotate(
            text,
            (max(row.value, mark or 0), y + offset),
            xytext=(5, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
            color=colour,
        )
        if pair:
            assert row.reference_value is not None
            panel.barh(y - offset, row.reference_value, height=0.36, color=REFERENCE_COLOUR)
            panel.annotate(
                f"{row.reference}: {_number(row.reference_value, unit)}",
                (max(row.reference_value, mark or 0), y - offset),
                xytext=(5, 0),
                textcoords="offset points",
                va="center",
                fontsize=8,
                color="dimgray",
            )
        if mark is not None:
            panel.vlines(mark, y - 0.45, y + 0.45, color="black", linewidth=2)
    panel.set_yticks(range(top, -1, -1), [_wrap(r.label) for r in rows], fontsize=8)
    panel.set_ylim(-0.6, top + 0.6)
    panel.set_xlim(0, widest * 1.75 if widest > 0 else 1)  # room for the labels on the right
    panel.set_xlabel(unit)
    panel.spines[["top", "right"]].set_visible(False)


def draw_latencies(results: Results) -> Any:
    """The figure of `results.latencies`: p50 and p99 per measurement, one panel per group."""
    plt = _pyplot()
    groups = _by(results.latencies, lambda item: item.group)
    heights = [max(1.2, 0.36 * len(items) + 0.5) for _, items in groups]
    figure, axes = _stacked_panels(plt, heights, f"{results.title}: latency")
    for panel, (_, items) in zip(axes[:, 0], groups, strict=True):
        top = len(items) - 1
        for index, item in enumerate(items):
            y = top - index
            panel.barh(y, item.p99_ms, height=0.6, color=P99_COLOUR)
            panel.barh(y, item.p50_ms, height=0.6, color=P50_COLOUR)
            panel.annotate(
                f"p50 {item.p50_ms:.1f} ms · p99 {item.p99_ms:.1f} ms",
                (item.p99_ms, y),
                xytext=(4, 0),
                textcoords="offset points",
                va="center",
                fontsize=8,
            )
        panel.set_yticks(range(top, -1, -1), [_wrap(i.label) for i in items], fontsize=8)
        panel.set_ylim(-0.6, top + 0.6)
        panel.set_xlim(0, max(i.p99_ms for i in items) * 1.45 or 1)
        panel.set_xlabel("latency (ms)")
        panel.spines[["top", "right"]].set_visible(False)
    handles = [
        plt.Rectangle((0, 0), 1, 1, color=P50_COLOUR, label="p50"),
        plt.Rectangle((0, 0), 1, 1, color=P99_COLOUR, label="p99"),
    ]
    figure.legend(handles=handles, loc="outside lower center", ncols=2, frameon=False)
    return figure


def draw(results: Results, directory: Path) -> list[Path]:
    """Write the charts of `results` into `directory` (made if missing); their paths."""
    import matplotlib

    plt = _pyplot()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ChartError(f"{directory}: cannot make it ({error.strerror})") from None
    written = []
    drawers: list[tuple[str, Callable[[Results], Any]]] = [("", draw_comparisons)]
    if results.latencies:
        drawers.append(("-latency", draw_latencies))
    for suffix, drawer in drawers:
        # labels are the results' own text: a "$" is a dollar, not the start of TeX math
        with matplotlib.rc_context({"text.parse_math": False}):
            figure = drawer(results)
        path = directory / f"{results.kind}{suffix}.svg"
        try:
            from sealserve.client.plot import save_figure

            save_figure(figure, path, "svg")
        except OSError as error:
            raise ChartError(f"{path}: cannot write it ({error.strerror})") from None
        finally:
            plt.close(figure)
        written.append(path)
    return written


# -- the benchmark scripts' --charts DIR ------------------------------------------------------


def charts_directory(text: str) -> Path:
    """argparse type of `--charts DIR`: checked before a run starts, not after it."""
    from sealserve.client.plot import require_matplotlib
    from sealserve.errors import SealserveError

    path = Path(text)
    try:
        require_matplotlib("--charts")
    except SealserveError as error:
        raise argparse.ArgumentTypeError(error.message) from None
    existing = next(p for p in (path.absolute(), *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{text}: cannot write into {existing}")
    return path


def add_charts_option(parser: argparse.ArgumentParser) -> None:
    """`--charts DIR` on a benchmark script's parser."""
    parser.add_argument(
        "--charts",
        type=charts_directory,
        metavar="DIR",
        help="also draw the comparisons as SVG charts into DIR (see benchmarks/charts.py)",
    )


def write_results(payload: dict[str, Any], args: argparse.Namespace) -> None:
    """A benchmark script's outputs from one `payload`: the JSON file (`--json PATH`) and
    its charts (`--charts DIR`), so both always show the same results."""
    if args.json:
        args.json.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    if args.charts:
        for path in draw(results_of(payload), args.charts):
            print(f"chart: {path}")


# -- redrawing from saved results -----------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="charts.py",
        description="Draw the benchmark scripts' comparisons from their --json results.",
    )
    parser.add_argument("results", nargs="+", type=Path, help="results files (--json output)")
    parser.add_argument(
        "--out", type=charts_directory, required=True, metavar="DIR", help="write the SVGs here"
    )
    args = parser.parse_args(argv)
    try:
        loaded = [load(path) for path in args.results]
        kinds = [results.kind for results in loaded]
        if duplicate := next((k for k in kinds if kinds.count(k) > 1), None):
            raise ChartError(
                f"two results files of the same benchmark ({duplicate}): their charts would "
                "have the same names; draw them into two directories"
            )
        for results in loaded:
            for path in draw(results, args.out):
                print(path)
    except ChartError as error:
        print(f"charts.py: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
