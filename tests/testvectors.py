"""Where the test vectors are: `tests/vectors/`, kept in the repository (provenance in its
README.md). Importing this fails loudly when they are missing: vector-driven tests must never
silently vanish or skip."""

from __future__ import annotations

from pathlib import Path

TESTVECTORS = Path(__file__).resolve().parent / "vectors"

if not (TESTVECTORS / "gramine-pf").is_dir() or not (TESTVECTORS / "dcap").is_dir():
    raise RuntimeError(f"test vectors missing under {TESTVECTORS} (a partial checkout?)")


def vector_cases(subset: str) -> list[Path]:
    """The case directories of one Gramine vector set; an empty set is an error."""
    root = TESTVECTORS / "gramine-pf" / subset
    cases = sorted(p for p in root.iterdir() if p.is_dir())
    if not cases:
        raise RuntimeError(f"no vectors in {root}")
    return cases
