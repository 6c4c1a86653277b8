"""Load a SavedModel whose plaintext exists only in this process's memory.

The files of a protected tree are decrypted chunk by chunk straight into TensorFlow's
in-memory file system (`ram://`), read from there while the load needs them, and deleted as
soon as it is done — plaintext never reaches a disk, /tmp or /dev/shm. Each load uses a fresh
random `ram://` prefix, so concurrent loads never see each other's files. Every file is
verified against the tree's manifest before TensorFlow reads any of it.

Decrypted bytes pass through Python in mutable buffers only (the reader's `bytearray`, one
`bytearray` per chunk handed to TensorFlow's writer), each overwritten with zeros once
written, so no immutable copy of plaintext is left for the garbage collector. What
TensorFlow copies into its own memory (the `ram://` file's string, then the Session's
tensors) is freed, not overwritten, when the file is deleted and the Session closed: Python
cannot reach it.

The few files the loader reads itself (`saved_model.pb`, the warm-up file) are also kept as
they stream past (`kept_along`), each in one `bytearray` sized from the manifest and wiped
by the loader once it is done: parsing them needs no TensorFlow, so a model served by
OpenVINO never has its files in `ram://` in the server (only in its conversion process's),
unless a signature falls back to TensorFlow. Parsing makes short-lived immutable copies of
a `saved_model.pbtxt`'s text and of each warm-up record (the CRC32C library takes `bytes`),
as TensorFlow's own reads of those files did.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any

from sealserve.model_tree import ProtectedTree
from sealserve.serving.tensorflow_runtime import import_tensorflow

# Where TensorFlow reads a SavedModel from, for as long as the block runs: a fresh ram://
# root (`tree_in_memory`), or a plain SavedModel's own directory
SavedModelRoot = Callable[[], contextlib.AbstractContextManager[str]]
Files = Iterable[tuple[str, Iterable[bytes | bytearray | memoryview]]]


@contextlib.contextmanager
def files_in_memory(
    directories: Iterable[str],
    files: Iterable[tuple[str, Iterable[bytes | bytearray | memoryview]]],
) -> Iterator[str]:
    """`files` (relative path, plaintext chunks) written under a fresh `ram://` root,
    deleted when the block exits, whether it succeeds or not."""
    tf = import_tensorflow()
    root = f"ram://sealserve-{secrets.token_hex(8)}"
    written: list[str] = []
    try:
        for directory in directories:
            tf.io.gfile.makedirs(f"{root}/{directory}")
        for relative, chunks in files:
            path = f"{root}/{relative}"
            written.append(path)
            _write_wiped(path, chunks)
        yield root
    finally:
        # Remove every file we wrote (they hold the plaintext), then the directories. The
        # ram:// file system's recursive delete stumbles on sibling directories sharing a
        # prefix (`assets`, `assets.extra`): it deletes everything, then raises NotFound.
        for path in written:
            with contextlib.suppress(tf.errors.NotFoundError):
                tf.io.gfile.remove(path)
        with contextlib.suppress(tf.errors.NotFoundError):
            tf.io.gfile.rmtree(root)


def _write_wiped(path: str, chunks: Iterable[bytes | bytearray | memoryview]) -> None:
    """Write `chunks` to a TensorFlow file, each through a bytearray zeroed afterwards.
    (GFile.write takes only bytes, which could not be overwritten: its writer takes a
    bytearray.)"""
    from tensorflow.python.lib.io import _pywrap_file_io

    out = _pywrap_file_io.WritableFile(path.encode(), b"w")
    try:
        for chunk in chunks:
            buffer = bytearray(chunk)
            try:
                out.append(buffer)
            finally:
                wipe(buffer)
            if isinstance(chunk, bytearray):
                wipe(chunk)
    finally:
        out.close()


def kept_along(
    files: Files, wanted: Collection[str], sizes: Mapping[str, int], kept: dict[str, bytearray]
) -> list[tuple[str, Iterator[bytes | bytearray | memoryview]]]:
    """`files` as they were, each chunk of a file in `wanted` also copied into `kept[path]`
    as it passes (one buffer of the file's size from `sizes`, grown only if the file is
    longer: the old buffer is wiped). The caller wipes `kept` when done with it."""

    def keep(path: str, chunks: Iterable[bytes | bytearray | memoryview]) -> Iterator[Any]:
        buffer = kept[path] = bytearray(sizes.get(path, 0))
        filled = 0
        for chunk in chunks:
            end = filled + len(chunk)
            if end > len(buffer):
                buffer = kept[path] = _grown(buffer, filled, end)
            buffer[filled:end] = chunk  # same length: in place
            filled = end
            yield chunk
        if filled < len(buffer):
            kept[path] = _grown(buffer, filled, filled)

    return [
        (path, keep(path, chunks) if path in wanted else iter(chunks)) for path, chunks in files
    ]


def _grown(buffer: bytearray, filled: int, size: int) -> bytearray:
    """A buffer of `max(size, 2 * len(buffer))` bytes (exactly `size` when shrinking) with
    `buffer`'s first `filled` bytes; `buffer` is wiped."""
    grown = bytearray(size if size <= filled else max(size, 2 * len(buffer)))
    grown[:filled] = memoryview(buffer)[:filled]
    wipe(buffer)
    return grown


def wipe_all(buffers: Mapping[str, bytearray]) -> None:
    for buffer in buffers.values():
        wipe(buffer)


def wipe(buffer: bytearray | memoryview) -> None:
    """Overwrite a writable buffer with zeros, in place."""
    view = memoryview(buffer).cast("B")
    view[:] = bytes(len(view))


def tree_in_memory(tree: ProtectedTree) -> contextlib.AbstractContextManager[str]:
    """A protected tree decrypted (and verified, file by file) under a fresh `ram://` root."""
    return files_in_memory(*tree_files(tree))


def tree_files(
    tree: ProtectedTree,
) -> tuple[list[str], Iterator[tuple[str, Iterator[memoryview]]]]:
    """A protected tree's directories, and each file's plaintext chunks, decrypted and
    verified as they are read (the reader's buffers, overwritten as it goes)."""
    files = ((entry.path, tree.iter_file(entry.path)) for entry in tree.manifest.files)
    return list(tree.manifest.directories), files


def load_protected_saved_model(tree: ProtectedTree, tags: Sequence[str] = ("serve",)) -> Any:
    """The `tf.saved_model.load` object of a protected tree, loaded from memory."""
    tf = import_tensorflow()
    with tree_in_memory(tree) as root:
        return tf.saved_model.load(root, tags=list(tags))
