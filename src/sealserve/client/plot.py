"""`sealserve client --plot FILE`: one figure of a benchmark run, for people who would rather
look than read — the latency distribution (with p50 and p99 marked) and the throughput over
the run (successful requests × batch per second, in up to 60 bins of at least 5 requests).

matplotlib (the `plot` extra) is imported only here, with its non-interactive Agg backend; a
missing matplotlib or an unsupported extension is one clear error before the run starts.
`pyplot()` and `save_figure()` are shared with the benchmark charts (benchmarks/charts.py):
figures are written atomically, SVG text stays text (no glyph outlines) and carries no date
or random ids, so drawing the same data twice gives the same bytes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sealserve.errors import Code, InvalidArgument, SealserveError
from sealserve.fsio import atomic_output_file

if TYPE_CHECKING:
    from sealserve.client.benchmark import BenchmarkResult

FORMATS = {".png": "png", ".svg": "svg"}


def require_matplotlib(option: str) -> None:
    """Refuse a missing matplotlib in one line naming `option` (e.g. `--plot`)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SealserveError(
            f"{option} needs matplotlib: pip install 'sealserve[plot]'",
            code=Code.FAILED_PRECONDITION,
        ) from None


def check_plot_path(path: str) -> str:
    """The format of `path` (png or svg); refuses others and a missing matplotlib."""
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise InvalidArgument(f"--plot {path}: give a .png or .svg file name")
    require_matplotlib("--plot")
    return fmt


def pyplot() -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend (no display needed)."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure: Any, path: Path, fmt: str) -> None:
    """Write `figure` to `path` (replacing it atomically); an SVG without a date."""
    import matplotlib

    # small, reproducible SVGs: text as <text> rather than glyph outlines, naming the font it
    # was laid out with (matplotlib's own DejaVu Sans) and the viewer's sans-serif, not ten
    # fallbacks on every label; element ids from a fixed salt instead of a random one; no date
    metadata = {"Date": None} if fmt == "svg" else None
    style = matplotlib.rc_context(
        {"svg.fonttype": "none", "svg.hashsalt": "sealserve", "font.sans-serif": ["DejaVu Sans"]}
    )
    with style, atomic_output_file(Path(path), replace=True) as out:
        figure.savefig(out, format=fmt, metadata=metadata)


def plot_run(result: BenchmarkResult, path: str) -> None:
    """Write the figure of `result` to `path` (replacing it atomically)."""
    fmt = check_plot_path(path)
    plt = pyplot()

    config = result.config
    title = (
        f"{config.model_name} over {'REST' if config.rest else 'gRPC'}: "
        f"{config.cnum} clients, batch {config.batch}"
    )
    figure, (latency_axes, rate_axes) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    figure.suptitle(title)
    latencies_ms = [1000 * value for value in result.latencies]
    if latencies_ms:
        latency_axes.hist(latencies_ms, bins=min(50, max(5, len(latencies_ms) // 5)))
        marks = result.percentiles_ms() or {}
        for name, style in (("p50", "--"), ("p99", ":")):
            if name in marks:
                value = marks[name]
                latency_axes.axvline(value, color="black", linestyle=style)
                latency_axes.annotate(
                    f"{name} {value:.1f} ms", (value, 0), rotation=90, va="bottom"
                )
    latency_axes.set_xlabel("latency (ms)")
    latency_axes.set_ylabel("requests")
    latency_axes.set_title("latency distribution")

    wall = result.wall_seconds or (max(result.completed_at) if result.completed_at else 0.0)
    if wall > 0 and result.completed_at:
        bins = max(1, min(60, len(result.completed_at) // 5))  # about 5 requests a bin or more
        width = wall / bins
        counts = [0] * bins
        for moment in result.completed_at:
            counts[min(bins - 1, int(moment / width))] += 1
        centres = [width * (i + 0.5) for i in range(bins)]
        rate_axes.plot(centres, [c * config.batch / width for c in counts], marker=".")
        rate_axes.axhline(result.tps, color="black", linestyle="--")
        rate_axes.annotate(f"mean {result.tps:.1f}/s", (0, result.tps), va="bottom")
    rate_axes.set_xlabel("time since the timed run started (s)")
    rate_axes.set_ylabel("throughput (items/s)")
    rate_axes.set_ylim(bottom=0)
    rate_axes.set_title("throughput over the run")
    save_figure(figure, Path(path), fmt)
    plt.close(figure)
