"""All-or-nothing outputs: a file or directory appears under its final name complete, or not
at all.

Outputs are built under a hidden temporary name beside the target (same file system, so the
final rename is atomic), fsynced, and renamed into place; on any failure the temporary is
removed, so no partial plaintext or half-written model is ever left behind. An existing target
is never replaced. Safe to use from several threads on different targets.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from sealserve.errors import AlreadyExists, NotFound

PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700


def refuse_existing(path: Path) -> None:
    if os.path.lexists(path):
        raise AlreadyExists(f"{path} already exists; choose another output or remove it first")


def _temporary_sibling(path: Path) -> Path:
    parent = path.parent
    if not parent.is_dir():
        raise NotFound(f"output directory {parent} does not exist")
    return parent / f".{path.name}.tmp-{secrets.token_hex(6)}"


@contextlib.contextmanager
def atomic_output_file(path: Path, *, mode: int = 0o644, replace: bool = False) -> Iterator[BinaryIO]:
    """A new file opened for writing (and seeking) that becomes `path` on success."""
    path = Path(path)
    if not replace:
        refuse_existing(path)
    tmp = _temporary_sibling(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
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
    """A new, empty directory to fill that becomes `path` on success."""
    path = Path(path)
    refuse_existing(path)
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


def copy_file_contents(src: BinaryIO, dst: BinaryIO) -> None:
    """Copy a whole file in the kernel (reflink where the file system can), from offset 0."""
    src.seek(0)
    dst.seek(0)
    shutil.copyfileobj(src, dst)  # uses copy_file_range / sendfile on Linux for real files
