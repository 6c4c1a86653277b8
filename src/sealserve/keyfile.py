"""Wrap-key files: 16 raw bytes, as `gramine-sgx-pf-crypt gen-key` writes them.

Reading also accepts the same key as 32 hex characters (the form a Gramine manifest's
`fs.insecure__keys.<name>` uses). Key files are created with mode 0600 and never replaced
unless asked. Key bytes never appear in messages.
"""

from __future__ import annotations

import binascii
import logging
import os
import stat
from pathlib import Path

from sealserve.errors import AlreadyExists, InvalidArgument
from sealserve.fsio import (
    PRIVATE_DIR_MODE,
    PRIVATE_FILE_MODE,
    atomic_output_file,
    read_user_file,
)
from sealserve.protected_files import KEY_SIZE

log = logging.getLogger(__name__)


def read_wrap_key(path: str | os.PathLike[str]) -> bytes:
    path = Path(path)
    raw = read_user_file(path, "wrap key file")
    if len(raw) == KEY_SIZE:
        key = raw
    else:
        try:
            key = binascii.unhexlify(raw.strip())
        except (binascii.Error, ValueError):
            key = b""
        if len(key) != KEY_SIZE:
            raise InvalidArgument(
                f"wrap key file {path} must hold {KEY_SIZE} raw bytes or {2 * KEY_SIZE} hex "
                f"characters (it has {len(raw)} bytes)"
            )
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("wrap key file %s is accessible to other users (mode %o)", path, mode & 0o777)
    return key


def generate_wrap_key_file(path: str | os.PathLike[str], *, force: bool = False) -> None:
    """Write 16 fresh random bytes to `path` with mode 0600; a missing directory for it is
    created with mode 0700."""
    path = Path(path)
    path.parent.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    if path.exists() and not force:
        raise AlreadyExists(f"{path} already exists; use --force to replace the key")
    if path.is_dir():
        raise InvalidArgument(f"{path} is a directory")
    with atomic_output_file(path, mode=PRIVATE_FILE_MODE, replace=force) as out:
        out.write(os.urandom(KEY_SIZE))
