"""`sealserve client --plot FILE`: one figure of a benchmark run, for people who would rather
look than read — the latency distribution (with p50 and p99 marked) and the throughput over
the run (successful requests × batch per second, in up to 60 bins of at least 5 requests).

matplotlib (the `plot` extra) is imported only here, with its non-interactive Agg backend; a
missing matplotlib or an unsupported extension is one clear error before the run starts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from sealserve.errors import Code, InvalidArgument, SealserveError
from sealserve.fsio import atomic_output_file

if TYPE_CHECKING:
    from sealserve.client.benchmark import BenchmarkResult

FORMATS = {".png": "png", ".svg": "svg"}


def check_plot_path(path: str) -> str:
    """The format of `path` (png or svg); refuses others and a missing matplotlib."""
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise InvalidArgument(f"--plot {path}: give a .png or .svg file name")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SealserveError(
            "--plot needs matplotlib: pip install 'sealserve[plot]'",
            code=Code.FAILED_PRECONDITION,
        ) from None
    return fmt


def plot_run(result: BenchmarkResult, path: str) -> None:
    """Write the figure of `result` to `path` (replacing it atomically)."""
    fmt = check_plot_path(path)
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    with atomic_output_file(Path(path), replace=True) as out:
        figure.savefig(out, format=fmt)
    plt.close(figure)
