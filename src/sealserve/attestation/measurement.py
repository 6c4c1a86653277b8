"""The simulated TEE's measurement (its MRENCLAVE): a digest of the code that runs and of how
it was launched.

A real SGX MRENCLAVE measures the enclave's initial pages; under Gramine that covers the
manifest and, through `sgx.trusted_files`, every file the application may load. The simulated
TEE approximates that with:

    installed_code_digest = SHA-256(canonical JSON {"format": "sealserve-code-v1",
                                     "files": [[posix relative path, SHA-256 hex], ...]})

over every regular file of the installed `sealserve` package (sorted by path; `__pycache__`
directories and `.pyc` files are skipped: they are derived, and differ between runs), and

    measurement(launch_config) = SHA-256(canonical JSON {"format": "sealserve-sim-measurement-v1",
                                 "code": installed_code_digest hex, "launch": launch_config})

where `launch_config` holds the serve settings that matter for security (model paths, TLS and
key-provider settings, ...), chosen by the caller. Canonical JSON = sorted keys, no
whitespace, UTF-8 (RFC 8785-compatible for the strings, integers and booleans such configs
hold; floats are refused because their text form is not canonical across implementations).
Changing one byte of one file or one launch setting changes the measurement.

This is a *simulation*: nothing stops the host from lying about the files. It gives the KBS's
policy something real to pin in tests and demos, nothing more.

Pure functions over the file system; thread-safe.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from sealserve.errors import InvalidArgument, NotFound

CODE_FORMAT = "sealserve-code-v1"
MEASUREMENT_FORMAT = "sealserve-sim-measurement-v1"
_SKIPPED_DIRS = {"__pycache__"}
_SKIPPED_SUFFIXES = (".pyc", ".pyo")


def _package_root() -> Path:
    import sealserve

    return Path(sealserve.__file__).resolve().parent


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no insignificant whitespace, UTF-8; only dicts with string keys, lists,
    strings, integers, booleans and null."""
    _check_canonical(value, "launch_config")
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _check_canonical(value: Any, where: str) -> None:
    if value is None or isinstance(value, bool | int | str):
        return
    if isinstance(value, float):
        raise InvalidArgument(f"{where} holds a float; use a string or an integer")
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_canonical(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidArgument(f"{where} has a non-string key {key!r}")
            _check_canonical(item, f"{where}.{key}")
        return
    raise InvalidArgument(f"{where} holds a {type(value).__name__}, which is not JSON")


def code_manifest(root: str | os.PathLike[str] | None = None) -> list[tuple[str, str]]:
    """(posix relative path, SHA-256 hex) of every file under `root`, sorted by path.
    `root` defaults to the installed `sealserve` package."""
    base = Path(root) if root is not None else _package_root()
    if not base.is_dir():
        raise NotFound(f"code directory {base} not found")
    entries: list[tuple[str, str]] = []
    for directory, subdirs, files in os.walk(base):
        subdirs[:] = sorted(d for d in subdirs if d not in _SKIPPED_DIRS)
        for name in files:
            if name.endswith(_SKIPPED_SUFFIXES):
                continue
            path = Path(directory) / name
            if not path.is_file():
                continue
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
            entries.append((path.relative_to(base).as_posix(), digest.hexdigest()))
    entries.sort()
    return entries


def installed_code_digest(root: str | os.PathLike[str] | None = None) -> bytes:
    """SHA-256 over the canonical description of the code under `root` (32 bytes)."""
    files = [list(entry) for entry in code_manifest(root)]
    description = {"format": CODE_FORMAT, "files": files}
    return hashlib.sha256(canonical_json(description)).digest()


def measurement(
    launch_config: dict[str, Any], *, code_root: str | os.PathLike[str] | None = None
) -> bytes:
    """The simulated MRENCLAVE (32 bytes) of this code launched with `launch_config`."""
    if not isinstance(launch_config, dict):
        raise InvalidArgument("launch_config must be a dict")
    _check_canonical(launch_config, "launch_config")
    description = {
        "format": MEASUREMENT_FORMAT,
        "code": installed_code_digest(code_root).hex(),
        "launch": launch_config,
    }
    return hashlib.sha256(canonical_json(description)).digest()
