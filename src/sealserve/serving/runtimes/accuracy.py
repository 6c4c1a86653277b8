"""How far a converted runtime's outputs are from TensorFlow's: the figures of the accuracy gate.

Two figures over every output of every compared run:
- relative error: max |converted - tensorflow| / max |tensorflow|, per floating-point output
  (the error against the output's own scale: an element-wise ratio would blow up wherever
  TensorFlow's value is near zero, which says nothing about the model's answer);
- top-1 agreement: the fraction of rows whose top class is the same, for floating-point
  outputs of rank >= 2 with more than one class on the last axis (scores, logits), and the
  fraction of equal elements for integer and boolean outputs (class ids).
Pure numpy, no state; `Agreement` accumulates runs and is used by one thread.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Agreement:
    max_relative_error: float = 0.0
    top1_rows: int = 0
    top1_agreeing: int = 0
    worst_output: str = ""  # the output with the largest relative error
    runs: int = 0
    outputs: set[str] = field(default_factory=set)

    @property
    def top1_agreement(self) -> float:
        return 1.0 if self.top1_rows == 0 else self.top1_agreeing / self.top1_rows

    def add(self, reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]) -> None:
        """One run's outputs: TensorFlow's (`reference`) and the converted runtime's."""
        self.runs += 1
        for alias, expected in reference.items():
            got = np.asarray(candidate[alias])
            expected = np.asarray(expected)
            if got.shape != expected.shape:
                raise ValueError(
                    f"output {alias} has shape {list(got.shape)}, TensorFlow's "
                    f"{list(expected.shape)}"
                )
            self.outputs.add(alias)
            if expected.dtype.kind == "f":
                error = relative_error(expected, got)
                if error > self.max_relative_error or not self.worst_output:
                    self.max_relative_error = max(error, self.max_relative_error)
                    self.worst_output = alias
                if expected.ndim >= 2 and expected.shape[-1] > 1 and expected.size:
                    same = np.argmax(expected, axis=-1) == np.argmax(got, axis=-1)
                    self.top1_rows += same.size
                    self.top1_agreeing += int(same.sum())
            elif expected.dtype.kind in "iub":
                same = expected == got
                self.top1_rows += same.size
                self.top1_agreeing += int(same.sum())

    def summary(self) -> str:
        return (
            f"max relative error {self.max_relative_error:.3g} (output "
            f"{self.worst_output or '-'}), top-1 agreement {self.top1_agreement:.4f} "
            f"({self.top1_agreeing}/{self.top1_rows}) over {self.runs} runs"
        )


def relative_error(expected: np.ndarray, got: np.ndarray) -> float:
    """max |got - expected| / max |expected| (0 for empty or all-zero outputs that match)."""
    if expected.size == 0:
        return 0.0
    expected64, got64 = expected.astype(np.float64), got.astype(np.float64)
    if not np.all(np.isfinite(got64) == np.isfinite(expected64)):
        return float("inf")
    finite = np.isfinite(expected64)
    difference = np.abs(got64[finite] - expected64[finite])
    if difference.size == 0:
        return 0.0
    scale = float(np.max(np.abs(expected64[finite])))
    worst = float(np.max(difference))
    if scale == 0.0:
        return 0.0 if worst == 0.0 else float("inf")
    return worst / scale
