"""All-or-nothing outputs: a file or directory appears under its final name complete, or not
at all.

Outputs are built under a hidden temporary name beside the target (same file system, so the
final rename is atomic), fsynced, and renamed into place; on any failure the temporary is
removed, so no partial plaintext or half-written model is ever left behind. An existing target
is never replaced. Safe to use from several threads on different targets.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from sealserve.errors import AlreadyExists, InvalidArgument, NotFound, PermissionDenied

PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700
WRITEBACK_BYTES = 8 << 20  # start writing dirty pages to disk every 8 MiB


def read_user_file(path: str | os.PathLike[str], what: str) -> bytes:
    """The bytes of a file the user named, or one clear error naming it as `what`."""
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise NotFound(f"{what} {path} not found") from None
    except IsADirectoryError:
        raise InvalidArgument(f"{what} {path} is a directory") from None
    except PermissionError:
        raise PermissionDenied(f"cannot read {what} {path}: permission denied") from None


def refuse_existing(path: Path) -> None:
    if os.path.lexists(path):
        raise AlreadyExists(f"{path} already exists; choose another output or remove it first")


def _temporary_sibling(path: Path) -> Path:
    parent = path.parent
    if not parent.is_dir():
        raise NotFound(f"output directory {parent} does not exist")
    return parent / f".{path.name}.tmp-{secrets.token_hex(6)}"


@contextlib.contextmanager
def atomic_output_file(
    path: Path, *, mode: int = 0o644, replace: bool = False
) -> Iterator[BinaryIO]:
    """A new file opened for writing (and seeking) that becomes `path` on success."""
    path = Path(path)
    if not replace:
        refuse_existing(path)
    tmp = _temporary_sibling(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            yield _WritebackFile(out)  # type: ignore[misc]
            out.flush()
            os.fsync(out.fileno())
        _publish(tmp, path, replace)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _publish(tmp: Path, path: Path, replace: bool) -> None:
    if replace:
        os.replace(tmp, path)
    else:
        os.link(tmp, path)  # fails if `path` appeared meanwhile: never replace a file
        os.unlink(tmp)
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_output_dir(path: Path, *, mode: int = 0o755) -> Iterator[Path]:
    """A new, empty directory to fill that becomes `path` on success. Missing parents are
    created (a model version directory such as `models/resnet50/1` is the usual output)."""
    path = Path(path)
    refuse_existing(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(path)
    os.mkdir(tmp, mode)
    try:
        yield tmp
        refuse_existing(path)
        os.rename(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _WritebackFile:
    """A file whose dirty pages start going to disk while it is still being written.

    Without this, every byte of a large output waits for the final fsync (a third of the time
    of encrypting a 256 MB file); `sync_file_range(SYNC_FILE_RANGE_WRITE)` starts writeback
    asynchronously, so disk and CPU work overlap and the fsync only waits for the tail."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self._unflushed = 0

    def write(self, data: bytes | memoryview) -> int:
        n = self._file.write(data)
        self._unflushed += n
        if self._unflushed >= WRITEBACK_BYTES:
            self._file.flush()
            _start_writeback(self._file.fileno())
            self._unflushed = 0
        return n

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


def _load_sync_file_range() -> Any:
    try:
        function = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).sync_file_range
    except (OSError, AttributeError):  # not Linux: the final fsync does all the work
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    return function


_SYNC_FILE_RANGE = _load_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


def _start_writeback(fd: int) -> None:
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)  # best effort: errors are ignored


def copy_file_contents(src: BinaryIO, dst: BinaryIO) -> None:
    """Copy a whole file from offset 0 inside the kernel (`copy_file_range`, which shares
    blocks on file systems that can, such as XFS and btrfs)."""
    src.flush() if hasattr(src, "flush") else None
    size = os.fstat(src.fileno()).st_size
    dst.flush()
    src_fd, dst_fd = src.fileno(), dst.fileno()
    offset = 0
    try:
        while offset < size:
            copied = os.copy_file_range(src_fd, dst_fd, size - offset, offset, offset)
            if copied == 0:
                break
            offset += copied
    except OSError:  # e.g. across file systems on old kernels: copy through user space
        src.seek(offset)
        dst.seek(offset)
        shutil.copyfileobj(src, dst)
