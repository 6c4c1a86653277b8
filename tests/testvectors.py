"""Where the shared test vectors are. Importing this fails loudly when they are missing:
vector-driven tests must never silently vanish or skip."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
TESTVECTORS = Path(
    os.environ.get("SEALSERVE_TESTVECTORS", REPO_ROOT.parent / "shared" / "testvectors")
)

if not TESTVECTORS.is_dir():
    raise RuntimeError(
        f"test vectors not found at {TESTVECTORS}: the suite needs ../shared/testvectors "
        "beside the repository (or SEALSERVE_TESTVECTORS)"
    )


def vector_cases(subset: str) -> list[Path]:
    """The case directories of one Gramine vector set; an empty set is an error."""
    root = TESTVECTORS / "gramine-pf" / subset
    cases = sorted(p for p in root.iterdir() if p.is_dir())
    if not cases:
        raise RuntimeError(f"no vectors in {root}")
    return cases
