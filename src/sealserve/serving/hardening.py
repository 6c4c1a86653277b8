"""Process-level protections of an attested server: no core dumps, not dumpable.

A core file, or a debugger attached by the same user, would copy the process's memory to
the host: decrypted model weights, model keys, the TLS private key, requests in flight.
`forbid_core_dumps()` sets `RLIMIT_CORE` to 0, soft and hard (the process cannot raise it
again), and on Linux `prctl(PR_SET_DUMPABLE, 0)`: no core whatever the limit, `ptrace` by
the same user refused, and `/proc/<pid>/mem`, `environ`, ... owned by root (proc(5),
prctl(2)). Root on the host can still read a plain process's memory: only a TEE stops that
(see docs/threat-model.md).

`PR_SET_DUMPABLE` is reset by `execve` of a set-user-ID program only, and the server execs
nothing, so it holds for the life of the process. Call once, early, from the main thread
(the setting is per process; any thread may call `dumpable()`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import resource
import sys

from sealserve.errors import FailedPrecondition

log = logging.getLogger(__name__)

# <linux/prctl.h>
PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4


def _prctl(option: int, value: int = 0) -> int:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    result = int(libc.prctl(option, value, 0, 0, 0))
    if result < 0:
        raise OSError(ctypes.get_errno(), "prctl failed")
    return result


def forbid_core_dumps(*, required: bool = True) -> None:
    """RLIMIT_CORE 0 (soft and hard) and, on Linux, not dumpable. With `required`, raises
    `FailedPrecondition` when either cannot be set: an attested server must not start
    without them. Inside an SGX enclave (Gramine emulates these calls, and may not know
    them) the host cannot read the enclave's memory anyway: there a failure is only logged."""

    def failed(what: str) -> None:
        if required:
            raise FailedPrecondition(what)
        log.info("%s (the enclave's memory is not the host's to dump)", what)

    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ValueError, OSError) as exc:
        failed(f"cannot turn core dumps off (RLIMIT_CORE): {exc}")
    if not sys.platform.startswith("linux"):
        log.warning("not Linux: core dumps are off, but the process stays dumpable")
        return
    try:
        _prctl(PR_SET_DUMPABLE, 0)
    except OSError as exc:
        failed(f"cannot make the process non-dumpable (prctl PR_SET_DUMPABLE): {exc.strerror}")


def dumpable() -> bool | None:
    """Whether this process is dumpable (`None` off Linux, where there is no such flag)."""
    if not sys.platform.startswith("linux"):
        return None
    return _prctl(PR_GET_DUMPABLE) != 0


def core_limit() -> tuple[int, int]:
    """The (soft, hard) RLIMIT_CORE of this process."""
    return resource.getrlimit(resource.RLIMIT_CORE)
