"""The process a model is converted in, and what passes between it and the server.

A model served by OpenVINO is converted in a child process (`openvino_worker`, a fresh
interpreter started with `sys.executable`, never a fork of the threaded server): it loads
the SavedModel into TensorFlow, converts and compiles each signature, computes TensorFlow's
answers for the accuracy gate, and sends back the compiled models (OpenVINO's export) and
those answers. The server itself never loads the model into TensorFlow, so nothing of
TensorFlow's load stays in its memory (ResNet-50: about 130 MiB, kept by a process that
loaded a SavedModel once even after every object is gone).

Everything passes through the child's stdin and stdout pipes, never a file: frames of an
8-byte length and that many bytes. A message is a JSON header frame, then the binary frames
the header announces: numpy arrays (`.npy`, no pickles either way) and byte streams (a run of
frames ended by an empty one). The child's stderr is the server's.

`ConversionProcess` owns one child: started when the load begins (its imports overlap the
decryption), killed on any failure, when the server stops (`stop_conversions`), or once
`timeout` has passed. Its end is always one clear reason: a child that crashes, is killed
(out of memory), hangs, or answers something unreadable ends the load with
`ConversionFailed`, never a hang or a traceback. The child also dies with the server
(PR_SET_PDEATHSIG, set by the child). `ConversionProcess` is used by one thread (the load);
`stop_conversions` may be called from any thread.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator
from typing import IO, Any

import numpy as np

from sealserve.errors import Code, SealserveError

log = logging.getLogger(__name__)

MAGIC = "sealserve-conversion/1"  # the first header's "protocol": a garbled stream stops here
# a conversion of ResNet-50 takes 10-30 s on 2 busy cores; this bounds a child that hangs
TIMEOUT_SECONDS = 1800.0
WORKER_MODULE = "sealserve.serving.runtimes.openvino_worker"
MAX_FRAME = 1 << 36  # 64 GiB: anything larger is a garbled length, not a frame
_LENGTH = struct.Struct("<Q")


class ConversionFailed(SealserveError):
    """The conversion process ended without an answer (crash, kill, timeout, garbage)."""

    code = Code.INTERNAL


class ProtocolError(Exception):
    """What the other side sent cannot be read."""


# -- frames -------------------------------------------------------------------------------


def write_frame(stream: IO[bytes], data: bytes | bytearray | memoryview) -> None:
    stream.write(_LENGTH.pack(len(data)))
    if len(data):
        stream.write(data)


def read_frame(stream: IO[bytes]) -> bytearray:
    """One frame's bytes (a fresh, writable buffer: the caller may wipe it)."""
    head = _read_exactly(stream, _LENGTH.size)
    (length,) = _LENGTH.unpack(head)
    if length > MAX_FRAME:
        raise ProtocolError(f"a frame of {length} bytes")
    return _read_exactly(stream, length)


def _read_exactly(stream: IO[bytes], length: int) -> bytearray:
    buffer = bytearray(length)
    view, done = memoryview(buffer), 0
    while done < length:
        got = stream.readinto(view[done:])  # type: ignore[attr-defined]
        if not got:
            raise EOFError("the stream ended")
        done += got
    return buffer


def write_header(stream: IO[bytes], header: dict[str, Any]) -> None:
    write_frame(stream, json.dumps({"protocol": MAGIC, **header}).encode())


def read_header(stream: IO[bytes]) -> dict[str, Any]:
    frame = read_frame(stream)
    try:
        header = json.loads(frame.decode())
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError("a header that is not JSON") from None
    if not isinstance(header, dict) or header.get("protocol") != MAGIC:
        raise ProtocolError("a header of another protocol")
    return header


def write_array(stream: IO[bytes], array: np.ndarray) -> None:
    """An array as `.npy` bytes (no object arrays: those would need a pickle)."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    write_frame(stream, buffer.getbuffer())


def read_array(stream: IO[bytes]) -> np.ndarray:
    try:
        return np.load(io.BytesIO(read_frame(stream)), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        if isinstance(exc, EOFError) and str(exc) == "the stream ended":
            raise
        raise ProtocolError("an array that is not .npy") from None


def write_stream(stream: IO[bytes], chunks: Iterable[bytes | bytearray | memoryview]) -> None:
    """A run of non-empty frames, ended by an empty one. Mutable chunks (decrypted model
    bytes) are overwritten with zeros once written."""
    for chunk in chunks:
        if len(chunk):
            write_frame(stream, chunk)
        if isinstance(chunk, bytearray):
            wipe(chunk)
    write_frame(stream, b"")


def read_stream(stream: IO[bytes]) -> Iterator[bytearray]:
    """The frames of a `write_stream` run, one by one (the caller wipes them)."""
    while True:
        frame = read_frame(stream)
        if not frame:
            return
        yield frame


def wipe(buffer: bytearray | memoryview) -> None:
    """Overwrite a writable buffer with zeros, in place."""
    view = memoryview(buffer).cast("B")
    view[:] = bytes(len(view))


# -- the child ----------------------------------------------------------------------------

_live: set[ConversionProcess] = set()
_spare: list[ConversionProcess] = []  # at most one, started ahead (`prestart`)
_live_lock = threading.Lock()


def stop_conversions() -> None:
    """Kill every conversion process of this server (it is stopping): their loads end."""
    with _live_lock:
        live = list(_live)
    for process in live:
        process.kill("the server is stopping")


def prestart() -> None:
    """Start a conversion process now, for the first OpenVINO load to take: its imports of
    TensorFlow and OpenVINO (seconds) then run while the server starts. Call it from the
    server's main thread (the child dies with the thread that started it), before the models
    load; `discard_prestarted` after."""
    process = ConversionProcess._spawn("a conversion process started ahead", quiet=True)
    if process is not None:
        with _live_lock:
            _spare.append(process)


def discard_prestarted() -> None:
    """End the process `prestart` started if no load took it (the initial loads are done)."""
    with _live_lock:
        spare = list(_spare)
        _spare.clear()
    for process in spare:
        process.close()


def worker_argv() -> list[str]:
    """The child's command line: this interpreter, with the flags this process was given
    that change what code runs (isolated mode, no user site, safe path)."""
    flags = [
        flag
        for flag, on in (
            ("-I", sys.flags.isolated),
            ("-s", sys.flags.no_user_site and not sys.flags.isolated),
            ("-E", sys.flags.ignore_environment and not sys.flags.isolated),
            ("-P", getattr(sys.flags, "safe_path", False) and not sys.flags.isolated),
        )
        if on
    ]
    return [sys.executable, *flags, "-m", WORKER_MODULE, str(os.getpid())]


class ConversionProcess:
    """One conversion child: `start()` it, `exchange()` a request for its answer, `close()`."""

    def __init__(self, model: str, timeout: float | None = None) -> None:
        self.model = model  # names the version in messages
        self.timeout = TIMEOUT_SECONDS if timeout is None else timeout
        self._child: subprocess.Popen[bytes] | None = None
        self._killed_because = ""
        self._broken = False  # the child stopped reading its stdin
        self.files_sent = False  # the SavedModel's files are on their way (see the loader)
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    @classmethod
    def start(cls, model: str) -> ConversionProcess | None:
        """A child for the load of `model` (the one `prestart` started, if it still runs), or
        None where this platform starts no processes (Gramine with
        `sys.disallow_subprocesses`: the conversion then runs in the server's process)."""
        with _live_lock:
            process = _spare.pop() if _spare else None
        if process is not None and process._child is not None and process._child.poll() is None:
            process.model = model
        else:
            if process is not None:
                process.close()
            process = cls._spawn(model)
            if process is None:
                return None
        process._timer = threading.Timer(
            process.timeout, process.kill, (f"it did not finish within {process.timeout:g} s",)
        )
        process._timer.daemon = True
        process._timer.start()
        return process

    @classmethod
    def _spawn(cls, model: str, quiet: bool = False) -> ConversionProcess | None:
        process = cls(model)
        try:
            process._child = subprocess.Popen(
                worker_argv(),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                close_fds=True,
                env=_child_environment(),
            )
        except OSError as exc:
            if not quiet:  # (started ahead: each load tries again, and says so)
                log.info(
                    "%s: no conversion process (%s); converting in this process",
                    model,
                    exc.strerror,
                )
            return None
        with _live_lock:
            _live.add(process)
        return process

    @property
    def pid(self) -> int | None:
        return None if self._child is None else self._child.pid

    def write(self, write: Any) -> bool:
        """`write(stdin)` part of the request; False, and nothing more is written, once the
        child stopped reading (it died: `send` or `receive` says how)."""
        child = self._running()
        if self._broken:
            return False
        try:
            assert child.stdin is not None
            write(child.stdin)
        except (BrokenPipeError, ConnectionResetError, ValueError):
            self._broken = True
        return not self._broken

    def send(self, write: Any) -> None:
        """`write(stdin)` the rest of the request, and close it. A child that died meanwhile
        is reported as such."""
        child = self._running()
        if self.write(write):
            with contextlib.suppress(BrokenPipeError, ConnectionResetError, ValueError):
                assert child.stdin is not None
                child.stdin.close()
                return
        raise self._failure("stopped reading its request")

    def receive(self, read: Any) -> Any:
        """`read(stdout)`'s value: the child's answer."""
        child = self._running()
        assert child.stdout is not None
        try:
            answer = read(child.stdout)
        except (EOFError, ProtocolError, OSError, ValueError) as exc:
            reason = "answered something unreadable" if isinstance(exc, ProtocolError) else ""
            raise self._failure(reason or "ended without an answer") from None
        return answer  # it exits once it has answered (`close` reaps it)

    def kill(self, why: str) -> None:
        """End the child now (idempotent); `why` becomes the load's error if it had not
        answered yet."""
        with self._lock:
            child = self._child
            if child is None or child.poll() is not None:
                return
            if not self._killed_because:
                self._killed_because = why
            child.kill()

    def close(self) -> None:
        """Kill the child if it still runs, and reap it. Idempotent."""
        self.kill("the load ended")
        if self._timer is not None:
            self._timer.cancel()
        child = self._child
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=60)
            for pipe in (child.stdin, child.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
        with _live_lock:
            _live.discard(self)

    def _running(self) -> subprocess.Popen[bytes]:
        if self._child is None:
            raise ConversionFailed(f"{self.model}: the conversion process was not started")
        return self._child

    def _failure(self, what: str) -> ConversionFailed:
        """The one reason the child gave no answer: killed by us (why), died (how), or
        `what` went wrong while it ran."""
        child = self._running()
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=10)
        status = child.poll()
        if self._killed_because:
            reason = f"stopped: {self._killed_because}"
        elif status is not None and status < 0:
            name = signal.Signals(-status).name if -status in signal.valid_signals() else -status
            reason = f"died of signal {name}" + (
                " (killed: out of memory?)" if -status == signal.SIGKILL else ""
            )
        elif status:
            reason = f"exited with status {status}"
        else:
            reason = what
        return ConversionFailed(f"the OpenVINO conversion process {reason}")


def _child_environment() -> dict[str, str]:
    """The server's environment, with TensorFlow's start-up chatter off (as in the server)."""
    environment = dict(os.environ)
    environment.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return environment
