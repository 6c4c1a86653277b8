"""The one way sealserve imports TensorFlow.

TensorFlow's C++ runtime prints start-up chatter (CUDA probing on machines without a GPU)
straight to file descriptor 2, before its log level applies. Users should see sealserve's own
lines, so the import and the first device initialisation run with fd 2 pointed at /dev/null;
Python exceptions are unaffected and still reach the caller. Call it early, before other
threads write to stderr. Idempotent and cheap after the first call. Thread counts
(`--tensorflow_intra_op_parallelism`, `--tensorflow_inter_op_parallelism`) take effect only
if given before TensorFlow starts, so `configure_threads` must run before the first import.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from types import ModuleType


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


_threads = {"intra_op": 0, "inter_op": 0}


def configure_threads(intra_op: int = 0, inter_op: int = 0) -> bool:
    """Size TensorFlow's thread pools (0: TensorFlow decides) when it starts. False if it
    has already started with other sizes, which can no longer change."""
    if import_tensorflow.cache_info().currsize:  # started: fine if these are what it has
        return (intra_op or _threads["intra_op"]) == _threads["intra_op"] and (
            inter_op or _threads["inter_op"]
        ) == _threads["inter_op"]
    _threads.update(intra_op=intra_op, inter_op=inter_op)
    return True


@functools.cache
def import_tensorflow() -> ModuleType:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # warnings and errors only
    with _native_stderr_silenced():
        import tensorflow as tf

        if _threads["intra_op"]:
            tf.config.threading.set_intra_op_parallelism_threads(_threads["intra_op"])
        if _threads["inter_op"]:
            tf.config.threading.set_inter_op_parallelism_threads(_threads["inter_op"])
        tf.config.list_logical_devices()  # device initialisation, while still silenced
    return tf
