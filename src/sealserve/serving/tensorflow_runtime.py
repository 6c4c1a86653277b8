"""The one way sealserve starts TensorFlow's runtime, and TensorFlow's protos without it.

TF Serving's protos (`tensorflow_serving.apis.*_pb2`) import TensorFlow's own
(`tensorflow.core.*_pb2`), and a plain import of those runs `tensorflow/__init__.py`: the
whole runtime (about 680 MiB resident, seconds). A server whose models all run on OpenVINO
needs only the protos. `defer_runtime()` (before anything imports them) puts a proto-only
`tensorflow` package in place: `tensorflow.core`, `tensorflow.compiler` and `tensorflow.tsl`
(plain generated protos) import from it as usual, without the runtime. `import_tensorflow()`
is the one gateway to the runtime: it swaps the proto-only package for the real one the
first time a model needs it, keeping the proto modules already imported (the real package
uses the same classes). Until then, importing `tensorflow.python` (where the runtime lives)
raises ImportError, and any other attribute of the proto-only package starts the runtime.

TensorFlow's C++ runtime prints start-up chatter (CUDA probing on machines without a GPU)
straight to file descriptor 2, before its log level applies. While it starts, fd 2 points at
a pipe that a thread drains into the real stderr, dropping only the lines TensorFlow's native
logger writes from the starting thread (absl's format carries the thread id): the runtime may
start late, while other threads serve and log, and their lines, sealserve's own included,
all get through, in the order written. Python exceptions are unaffected and reach the caller.

Thread counts (`--tensorflow_intra_op_parallelism`, `--tensorflow_inter_op_parallelism`)
take effect only if given before TensorFlow starts, so `configure_threads` must run before
the first `import_tensorflow()`, late start included. Thread safe: the runtime starts once,
under a lock; other callers wait for it.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.abc
import importlib.machinery
import importlib.util
import os
import re
import select
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from types import ModuleType
from typing import Any

# Sub-packages of `tensorflow` that hold generated protos only: importable without the runtime
PROTO_PACKAGES = ("core", "compiler", "tsl")
PIPE_BYTES = 1 << 20  # room for stderr lines while the starting thread holds the GIL

_threads = {"intra_op": 0, "inter_op": 0}
_start_lock = threading.RLock()
_runtime: ModuleType | None = None
_starting_thread: int | None = None


class _ProtoOnlyPackage(ModuleType):
    """`tensorflow` before its runtime starts. Its proto sub-packages import as usual (the
    import system asks for them as attributes first: those are left missing); any other
    attribute is the real package's, which starts the runtime."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in PROTO_PACKAGES:
            raise AttributeError(f"module 'tensorflow' has no attribute '{name}'")
        return getattr(import_tensorflow(), name)


class _RuntimeImportGuard(importlib.abc.MetaPathFinder):
    """While the proto-only package is in place, a runtime module (`tensorflow.python`...)
    imported before `import_tensorflow()` is an error, not half a TensorFlow started under
    it (without its `__init__`, its thread settings or the quiet start)."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        parts = fullname.split(".")
        if (
            len(parts) > 1
            and parts[0] == "tensorflow"
            and parts[1] not in PROTO_PACKAGES
            and isinstance(sys.modules.get("tensorflow"), _ProtoOnlyPackage)
        ):
            raise ImportError(
                f"{fullname} is part of TensorFlow's runtime, which has not started: "
                "call import_tensorflow() first",
                name=fullname,
            )
        return None


_guard = _RuntimeImportGuard()


def defer_runtime() -> bool:
    """Make TensorFlow's protos importable without starting its runtime (see the module's
    doc); call it before anything imports TensorFlow or TF Serving's protos. False, and
    nothing changes, if TensorFlow is already imported (or not installed)."""
    with _start_lock:
        present = sys.modules.get("tensorflow")
        if present is not None:
            return isinstance(present, _ProtoOnlyPackage)
        spec = importlib.util.find_spec("tensorflow")
        if spec is None or spec.submodule_search_locations is None:
            return False
        package = _ProtoOnlyPackage("tensorflow")
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec
        package.__file__ = spec.origin
        package.__package__ = "tensorflow"
        sys.modules["tensorflow"] = package
        sys.meta_path.insert(0, _guard)
        return True


def protos_importable() -> None:
    """Make TF Serving's protos importable, quietly: nothing to do after `defer_runtime`
    (they import without the runtime), else the runtime starts (they import it)."""
    if not isinstance(sys.modules.get("tensorflow"), _ProtoOnlyPackage):
        import_tensorflow()


def started() -> bool:
    """Whether TensorFlow's runtime has started in this process."""
    return _runtime is not None


def configure_threads(intra_op: int = 0, inter_op: int = 0) -> bool:
    """Size TensorFlow's thread pools (0: TensorFlow decides) when it starts. False if it
    has already started with other sizes, which can no longer change."""
    with _start_lock:
        if started():  # fine if these are what it has
            return (intra_op or _threads["intra_op"]) == _threads["intra_op"] and (
                inter_op or _threads["inter_op"]
            ) == _threads["inter_op"]
        _threads.update(intra_op=intra_op, inter_op=inter_op)
        return True


def import_tensorflow() -> ModuleType:
    """The `tensorflow` module, its runtime started (once, quietly, with the configured
    thread pools)."""
    global _runtime, _starting_thread
    runtime = _runtime
    if runtime is not None:
        return runtime
    with _start_lock:
        if _runtime is None:
            if _starting_thread == threading.get_ident():
                raise RuntimeError("TensorFlow's start-up needs TensorFlow (a circular start)")
            _starting_thread = threading.get_ident()
            try:
                _runtime = _start()
            finally:
                _starting_thread = None
        return _runtime


def tensorflow_errors() -> tuple[type[BaseException], ...]:
    """What `except` clauses catch as TensorFlow's run errors: `tf.errors.OpError` once the
    runtime has started, nothing before (no TensorFlow runner can have run)."""
    runtime = _runtime
    return (runtime.errors.OpError,) if runtime is not None else ()


def _start() -> ModuleType:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # warnings and errors only
    with _native_start_up_lines_dropped():
        deferred = sys.modules.get("tensorflow")
        if not isinstance(deferred, _ProtoOnlyPackage):
            deferred = None
        else:
            del sys.modules["tensorflow"]
            sys.meta_path.remove(_guard)
        try:
            import tensorflow as tf
        except BaseException:
            if deferred is not None:  # as it was: the protos keep working
                sys.modules["tensorflow"] = deferred
                sys.meta_path.insert(0, _guard)
            raise
        if deferred is not None:
            # the proto sub-packages were imported under the proto-only package: the real
            # one reuses them from sys.modules, but has no attributes for them yet
            for name in PROTO_PACKAGES:
                module = sys.modules.get(f"tensorflow.{name}")
                if module is not None and name not in vars(tf):
                    setattr(tf, name, module)
        if _threads["intra_op"]:
            tf.config.threading.set_intra_op_parallelism_threads(_threads["intra_op"])
        if _threads["inter_op"]:
            tf.config.threading.set_inter_op_parallelism_threads(_threads["inter_op"])
        tf.config.list_logical_devices()  # device initialisation, while still filtered
    return tf


# absl's log line prefix: severity, date, time, thread id, file:line]
_NATIVE_LINE = re.compile(rb"[IWEF]\d{4} \d+:\d+:\d+\.\d+ +(\d+) \S+:\d+\] ")
_NATIVE_BANNERS = (
    b"WARNING: All log messages before absl::InitializeLog() is called",
    b"To enable the following instructions:",  # cpu_feature_guard's second line
)


@contextlib.contextmanager
def _native_start_up_lines_dropped() -> Iterator[None]:
    """fd 2 through a pipe while the block runs: every line but TensorFlow's native start-up
    lines (`_is_start_up_line`) is passed on to the real stderr, in the order written."""
    with contextlib.suppress(AttributeError, ValueError, OSError):
        sys.stderr.flush()  # what Python holds goes where it was meant to
    read_end, write_end = os.pipe()
    with contextlib.suppress(AttributeError, OSError):  # Linux only; the default is 64 kB
        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    lines = _LineFilter(os.dup(2), threading.get_native_id())
    stop_read, stop_write = os.pipe()
    forwarder = _start_daemon(_forward_until_stopped, read_end, stop_read, lines)
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield
    finally:
        with contextlib.suppress(AttributeError, ValueError, OSError):
            sys.stderr.flush()
        # Order across the switch back: the forwarder stops, what is in the pipe goes out,
        # and only then does fd 2 point at the real stderr again (so no line written after
        # the switch can overtake one written before). What lands in the pipe in the
        # microseconds between the last read and the switch goes out right after it (only a
        # line written in those same microseconds can come before it).
        os.write(stop_write, b"\0")
        forwarder.join()
        os.close(stop_write)
        os.close(stop_read)
        os.set_blocking(read_end, False)
        lines.pass_on_available(read_end)
        os.dup2(lines.real_stderr, 2)
        lines.pass_on_available(read_end)
        # the pipe stays open until every writer has closed it: a child process started
        # meanwhile has it as its stderr until it exits
        os.set_blocking(read_end, True)
        _start_daemon(_forward_to_end, read_end, lines)


def _start_daemon(target: Callable[..., None], *args: Any) -> threading.Thread:
    thread = threading.Thread(
        target=target, args=args, name="sealserve-tensorflow-start", daemon=True
    )
    thread.start()
    return thread


class _LineFilter:
    """Passes lines on to the real stderr but TensorFlow's native start-up lines."""

    def __init__(self, real_stderr: int, thread_id: int) -> None:
        self.real_stderr = real_stderr
        self._thread_id = thread_id
        self._pending = b""  # the start of a line whose end is still to come

    def pass_on(self, chunk: bytes) -> None:
        lines = (self._pending + chunk).split(b"\n")
        self._pending = lines.pop()
        kept = [line + b"\n" for line in lines if not self._is_start_up_line(line)]
        _write_all(self.real_stderr, b"".join(kept))

    def pass_on_available(self, read_end: int) -> None:
        """Everything the (non-blocking) pipe holds now. Runs in the starting thread: a
        stderr gone away (nothing to say it on) must not fail TensorFlow's start."""
        with contextlib.suppress(OSError):  # BlockingIOError too: the pipe is empty
            while chunk := os.read(read_end, 1 << 16):
                self.pass_on(chunk)

    def finish(self) -> None:
        if self._pending and not self._is_start_up_line(self._pending):
            _write_all(self.real_stderr, self._pending)
        self._pending = b""

    def _is_start_up_line(self, line: bytes) -> bool:
        native = _NATIVE_LINE.match(line)
        if native is not None:
            return int(native.group(1)) == self._thread_id
        return line.startswith(_NATIVE_BANNERS)


def _forward_until_stopped(read_end: int, stop: int, lines: _LineFilter) -> None:
    """Pass lines on as they come, until a byte arrives on `stop`."""
    poller = select.poll()
    poller.register(read_end, select.POLLIN)
    poller.register(stop, select.POLLIN)
    with contextlib.suppress(OSError):  # stderr went away: nothing to say it on
        while True:
            ready = {fd for fd, _ in poller.poll()}
            if stop in ready:
                return
            chunk = os.read(read_end, 1 << 16)
            if not chunk:
                return
            lines.pass_on(chunk)


def _forward_to_end(read_end: int, lines: _LineFilter) -> None:
    """Pass on what is left until the last writer closes the pipe; close both ends."""
    try:
        while chunk := os.read(read_end, 1 << 16):
            lines.pass_on(chunk)
        lines.finish()
    except OSError:
        pass  # stderr went away: nothing to say it on
    finally:
        os.close(read_end)
        os.close(lines.real_stderr)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
