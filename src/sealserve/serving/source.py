"""The version source: which versions each model's base path offers (TF Serving's
FileSystemStoragePathSource, kept small).

A base path holds numeric version directories (others are ignored, as TF Serving does);
`fingerprint` summarises a version directory so that a version that failed to load is tried
again once its files change (a copy that was still in progress, a fixed file). `Poller`
calls a function every few seconds on a daemon thread of its own, never on a request or
inference thread. Everything here reads directories the host controls: it only lists and
stats them, it trusts nothing it finds (the loader authenticates). Thread safe.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

MAX_VERSION = 2**63 - 1  # an int64, as in TF Serving's protos
Fingerprint = tuple[float, int]


def version_dirs(base_path: str) -> set[int]:
    """The numeric version directories under `base_path` (none if it cannot be read)."""
    try:
        entries = list(Path(base_path).iterdir())
    except OSError:
        return set()
    versions = set()
    for entry in entries:
        if entry.name.isdigit() and int(entry.name) <= MAX_VERSION and entry.is_dir():
            versions.add(int(entry.name))
    return versions


def version_path(base_path: str, version: int) -> Path:
    return Path(base_path) / str(version)


def fingerprint(path: Path) -> Fingerprint:
    """(latest modification time, total size) of the files under a version directory."""
    latest, total = 0.0, 0
    for item in path.rglob("*"):
        try:
            info = item.stat()
        except OSError:
            continue
        latest, total = max(latest, info.st_mtime), total + info.st_size
    return latest, total


class Poller:
    """Calls `poll()` every `seconds` on a daemon thread until `stop()`; a failing poll is
    logged and the next one runs as planned."""

    def __init__(self, name: str, seconds: float, poll: Callable[[], None]) -> None:
        self._seconds, self._poll = seconds, poll
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> Poller:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10) -> None:
        self._stopped.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stopped.wait(self._seconds):
            try:
                self._poll()
            except Exception:  # a poll must never kill the server
                log.exception("%s failed", self._thread.name)
