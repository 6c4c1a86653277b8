"""Attacker-chosen text (request paths, TEE names, error details quoting them) made safe for a
log line or an audit record: bounded, and with every control or non-ASCII character escaped,
so a URL-encoded newline cannot start a forged log line and an 8 KB path cannot fill the disk.

`shown` is pure; `LogThrottle` is thread-safe.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

#: Longest text kept from a caller-chosen value (a resource path is at most 3 × 128 + 2).
MAX_SHOWN = 400


def shown(value: Any, limit: int = MAX_SHOWN) -> str:
    """`value` as printable ASCII, at most about `limit` characters (plus a length note)."""
    text = value if isinstance(value, str) else str(value)
    # The backslash first, so that an escape sequence in the input cannot pass for one of
    # ours; then non-ASCII (backslashreplace), then the ASCII controls it leaves alone.
    cut = text[:limit].replace("\\", "\\\\")
    escaped = cut.encode("ascii", "backslashreplace").decode("ascii")
    out = []
    for char in escaped:
        code = ord(char)
        if code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        else:
            out.append(char)
    result = "".join(out)
    if len(text) > limit:
        result += f"...[{len(text)} chars]"
    return result


class LogThrottle:
    """At most `per_second` log lines a second for one kind of anonymous failure (counted in
    the metrics either way), so a flood from many addresses cannot fill the disk with logs.
    Thread-safe."""

    def __init__(
        self, per_second: int = 10, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._per_second = per_second
        self._clock = clock
        self._window = 0
        self._count = 0
        self._lock = threading.Lock()

    def allow(self) -> bool:
        second = int(self._clock())
        with self._lock:
            if second != self._window:
                self._window, self._count = second, 0
            self._count += 1
            return self._count <= self._per_second
