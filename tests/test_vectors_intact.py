"""The vectors in `tests/vectors/` are the bytes other implementations made: every file listed
in `SHA256SUMS` is present and unchanged, and no data file is unlisted."""

from __future__ import annotations

import hashlib

from tests.testvectors import TESTVECTORS

NOT_VECTORS = {"SHA256SUMS", "README.md"}


def listed() -> dict[str, str]:
    lines = (TESTVECTORS / "SHA256SUMS").read_text().splitlines()
    return {name.removeprefix("./"): digest for digest, name in (ln.split("  ", 1) for ln in lines)}


def test_every_vector_file_matches_its_recorded_sha256():
    for name, digest in listed().items():
        data = (TESTVECTORS / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest, f"{name} was modified"


def test_no_vector_file_is_unlisted():
    present = {
        str(p.relative_to(TESTVECTORS))
        for p in TESTVECTORS.rglob("*")
        if p.is_file() and p.name not in NOT_VECTORS
    }
    assert present == set(listed())
