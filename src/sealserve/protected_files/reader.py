"""Streaming, random-access reader of Gramine protected files (format versions 1 and 2).

Opening a file authenticates its metadata node (and the root MHT node); data and MHT nodes are
decrypted lazily, only those a read needs, each authenticated by the tag its parent holds, so
reading bytes [a, b) of a huge file costs O(b − a) plus the MHT path to them. Memory is
bounded: one group buffer (96 nodes) and a small cache of decrypted MHT nodes, whatever the
file size.

Stricter than Gramine (§9, §14): besides everything Gramine rejects, this reader also rejects
the header bytes Gramine leaves unauthenticated when they are not what its tool writes — a
non-zero minor version, any feature flag (HAS_PENDING_WRITE means an interrupted write whose
content needs Gramine's recovery file), non-zero metadata padding — and whole nodes appended
after the last one. None of these can change the plaintext, but a file carrying them was not
written by a Gramine tool or has been tampered with, and a model server should say so.

A reader is not thread safe: give each thread its own.
"""

from __future__ import annotations

import io
import logging
import os
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from sealserve.errors import DataLoss, InvalidArgument, PermissionDenied
from sealserve.protected_files import format as fmt
from sealserve.protected_files.crypto import (
    AESGCM,
    ZERO_IV,
    InvalidTag,
    check_wrap_key,
    derive_metadata_key,
    gcm_decrypt,
)

log = logging.getLogger(__name__)

_MHT_CACHE_NODES = 64  # 256 KiB: the MHT path of any read plus a window of recent groups


class NotAProtectedFile(InvalidArgument):
    """The bytes are not a Gramine protected file (or one of an unsupported format)."""


class AuthenticationFailed(DataLoss):
    """A GCM tag did not verify: wrong wrap key, or the file was corrupted or tampered with."""


class BoundPathMismatch(PermissionDenied):
    """The file is bound to another path than the one it is opened as (Gramine's -V)."""


class ProtectedFileReader(io.RawIOBase):
    """Decrypts a protected file on demand.

    `source` is a path or a seekable binary file object (left open on close when passed in).
    `expected_path`, when given, must equal the bound path after Gramine's normalization.
    `name` is what error messages call the file (defaults to the path).
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | fmt.RandomAccessSource,
        wrap_key: bytes,
        *,
        expected_path: str | bytes | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__()
        wrap_key = check_wrap_key(wrap_key)
        if isinstance(source, (str, os.PathLike)):
            self._file: Any = open(source, "rb")  # noqa: SIM115 - closed in close()
            self._owns_file = True
            self.name = name or os.fspath(source)
        else:
            self._file = source
            self._owns_file = False
            self.name = name or str(getattr(source, "name", "<protected file>"))
        try:
            self._open(wrap_key, expected_path)
        except BaseException:
            self.close()
            raise
        self._pos = 0

    # -- opening -------------------------------------------------------------------------

    def _open(self, wrap_key: bytes, expected_path: str | bytes | None) -> None:
        self._file.seek(0, io.SEEK_END)
        stored_size = self._file.tell()
        if stored_size == 0 or stored_size % fmt.NODE_SIZE:
            raise NotAProtectedFile(
                f"{self.name} is not a protected file (its size {stored_size} is not a "
                f"positive multiple of {fmt.NODE_SIZE})"
            )
        self.header, self.metadata = open_metadata_node(
            self._read_physical(0, 1), wrap_key, self.name
        )
        self.size = self.metadata.size
        self.bound_path = self.metadata.bound_path
        self.version = self.header.version
        if expected_path is not None:
            expected = fmt.normalize_path(expected_path)
            if expected != self.bound_path:
                raise BoundPathMismatch(
                    f"{self.name} is bound to path '{fmt.display_path(self.bound_path)}', "
                    f"not '{fmt.display_path(expected)}'"
                )

        expected_size = fmt.encrypted_size(self.size)
        if stored_size < expected_size:
            raise DataLoss(f"{self.name} is truncated ({stored_size} of {expected_size} bytes)")
        if stored_size > expected_size:
            raise NotAProtectedFile(
                f"{self.name} has {stored_size - expected_size} bytes of trailing data after "
                f"its last node (expected {expected_size} bytes; re-encrypt it)"
            )

        self._data_nodes = fmt.data_node_count(self.size)
        self._mht_cache: OrderedDict[int, bytes] = OrderedDict()
        self._root_mht = b""
        if self._data_nodes:
            self._root_mht = self._decrypt_node(
                fmt.mht_node_physical(0), self.metadata.root_mht_key, self.metadata.root_mht_mac
            )
        self._group = bytearray(fmt.DATA_SLOTS_PER_MHT * fmt.NODE_SIZE)
        # ciphertext of one group, plus room for the last node's tag (see _decrypt_group)
        self._stored = bytearray(fmt.DATA_SLOTS_PER_MHT * fmt.NODE_SIZE + fmt.MAC_SIZE)

    # -- node access ---------------------------------------------------------------------

    def _read_physical(self, first: int, count: int) -> bytes:
        self._file.seek(first * fmt.NODE_SIZE)
        want = count * fmt.NODE_SIZE
        data = self._file.read(want)
        if len(data) != want:
            raise DataLoss(
                f"{self.name} is truncated (node {first + len(data) // fmt.NODE_SIZE} is missing)"
            )
        return data

    def _decrypt_node(self, physical: int, key: bytes, tag: bytes) -> bytes:
        plain = gcm_decrypt(key, self._read_physical(physical, 1), tag)
        if plain is None:
            log.info("GCM tag mismatch at node %d of %s", physical, self.name)
            raise self._corrupted()
        return plain

    def _corrupted(self) -> AuthenticationFailed:
        return AuthenticationFailed(
            f"authentication failed for {self.name} (the file is corrupted)"
        )

    def _mht(self, m: int) -> bytes:
        """Plaintext of MHT node m, authenticated along its path from the root."""
        if m == 0:
            return self._root_mht
        cached = self._mht_cache.get(m)
        if cached is not None:
            self._mht_cache.move_to_end(m)
            return cached
        parent, slot = fmt.mht_parent(m)
        entry = fmt.child_entry_offset(slot)
        parent_plain = self._mht(parent)
        plain = self._decrypt_node(
            fmt.mht_node_physical(m),
            parent_plain[entry : entry + fmt.KEY_SIZE],
            parent_plain[entry + fmt.KEY_SIZE : entry + fmt.ENTRY_SIZE],
        )
        self._mht_cache[m] = plain
        if len(self._mht_cache) > _MHT_CACHE_NODES:
            self._mht_cache.popitem(last=False)
        return plain

    def _decrypt_group(self, d0: int, d1: int) -> memoryview:
        """Decrypt data nodes [d0, d1), all children of one MHT node, into the group buffer.

        AES-GCM wants each node's ciphertext followed by its tag, but the tags live in the
        MHT node. Nodes are decrypted last to first, so each tag can be written just after
        its node's ciphertext, over the first bytes of the next node, already decrypted:
        no per-node copy of the ciphertext."""
        mht = self._mht(d0 // fmt.DATA_SLOTS_PER_MHT)
        count = d1 - d0
        stored = memoryview(self._stored)
        self._file.seek(fmt.data_node_physical(d0) * fmt.NODE_SIZE)
        want = count * fmt.NODE_SIZE
        if self._file.readinto(stored[:want]) != want:
            raise DataLoss(f"{self.name} is truncated")
        out = memoryview(self._group)
        for i in range(count - 1, -1, -1):
            entry = fmt.data_entry_offset(d0 + i)
            node = i * fmt.NODE_SIZE
            stored[node + fmt.NODE_SIZE : node + fmt.NODE_SIZE + fmt.MAC_SIZE] = mht[
                entry + fmt.KEY_SIZE : entry + fmt.ENTRY_SIZE
            ]
            try:
                AESGCM(mht[entry : entry + fmt.KEY_SIZE]).decrypt_into(
                    ZERO_IV,
                    stored[node : node + fmt.NODE_SIZE + fmt.MAC_SIZE],
                    None,
                    out[node : node + fmt.NODE_SIZE],
                )
            except InvalidTag:
                log.info("GCM tag mismatch at data node %d of %s", d0 + i, self.name)
                raise self._corrupted() from None
        return out[:want]

    # -- plaintext access ----------------------------------------------------------------

    def iter_chunks(self, start: int = 0, end: int | None = None) -> Iterator[memoryview]:
        """Yield the plaintext [start, end) in chunks of at most 96 nodes.

        Each chunk is a view of an internal buffer, valid until the next one is produced.
        """
        end = self.size if end is None else min(end, self.size)
        pos = max(0, start)
        inline = self.metadata.inline_data
        if pos < min(end, fmt.INLINE_DATA_SIZE):
            stop = min(end, fmt.INLINE_DATA_SIZE)
            yield memoryview(inline)[pos:stop]
            pos = stop
        while pos < end:
            d0 = (pos - fmt.INLINE_DATA_SIZE) // fmt.NODE_SIZE
            group_end = (d0 // fmt.DATA_SLOTS_PER_MHT + 1) * fmt.DATA_SLOTS_PER_MHT
            d1 = min(group_end, -(-(end - fmt.INLINE_DATA_SIZE) // fmt.NODE_SIZE))
            plain = self._decrypt_group(d0, d1)
            base = fmt.INLINE_DATA_SIZE + d0 * fmt.NODE_SIZE
            stop = min(end, base + len(plain))
            yield plain[pos - base : stop - base]
            pos = stop

    def pread(self, offset: int, length: int) -> bytes:
        """Plaintext bytes [offset, offset + length), decrypting only the nodes they span."""
        if offset < 0 or length < 0:
            raise InvalidArgument("offset and length must not be negative")
        return b"".join(bytes(c) for c in self.iter_chunks(offset, offset + length))

    def read_all(self) -> bytes:
        return self.pread(0, self.size)

    # -- io.RawIOBase --------------------------------------------------------------------

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise InvalidArgument("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        out = memoryview(buffer).cast("B")
        written = 0
        for chunk in self.iter_chunks(self._pos, self._pos + len(out)):
            out[written : written + len(chunk)] = chunk
            written += len(chunk)
        self._pos += written
        return written

    def close(self) -> None:
        if not self.closed and getattr(self, "_owns_file", False):
            self._file.close()
        group = getattr(self, "_group", None)
        if group is not None:  # the last plaintext decrypted: overwritten, not just freed
            memoryview(group)[:] = bytes(len(group))
        super().close()


def open_metadata_node(node0: bytes, wrap_key: bytes, name: str) -> tuple[fmt.Header, fmt.Metadata]:
    """Parse and authenticate node 0: the header checks of §9 and the metadata decryption."""
    header = _parse_header(node0, name)
    layout = header.layout
    metadata_key = derive_metadata_key(check_wrap_key(wrap_key), header.nonce)
    plain = gcm_decrypt(
        metadata_key, node0[layout.encrypted_offset : layout.encrypted_end], header.metadata_mac
    )
    if plain is None:
        log.info("metadata GCM tag mismatch in %s", name)
        raise AuthenticationFailed(
            f"authentication failed for {name} (wrong key, or the file is corrupted)"
        )
    if any(node0[layout.encrypted_end :]):
        raise NotAProtectedFile(
            f"{name} has non-zero bytes in its unauthenticated header padding "
            "(not written by a Gramine tool, or tampered with)"
        )
    return header, fmt.unpack_metadata(plain)


def _parse_header(node0: bytes, name: str) -> fmt.Header:
    magic = node0[:8]
    if magic == fmt.GRAPHENE_FILE_ID:
        raise NotAProtectedFile(f"{name} is a pre-1.0 Graphene protected file; re-encrypt it")
    if magic != fmt.FILE_ID:
        raise NotAProtectedFile(f"{name} is not a protected file (bad magic)")
    version = node0[fmt.MAJOR_OFFSET]
    if version not in fmt.SUPPORTED_VERSIONS:
        raise NotAProtectedFile(f"{name} has unsupported protected-file format version {version}")
    minor = node0[fmt.MINOR_OFFSET]
    if minor != fmt.MINOR_VERSION:
        raise NotAProtectedFile(f"{name} has unsupported format minor version {version}.{minor}")
    flags = node0[fmt.FLAGS_OFFSET] if fmt.LAYOUTS[version].has_flags else 0
    if flags & fmt.FLAG_HAS_PENDING_WRITE:
        raise NotAProtectedFile(
            f"{name} was left mid-write by Gramine (pending-write flag set); recover it in "
            "Gramine first"
        )
    if flags:
        raise NotAProtectedFile(f"{name} has unknown feature flags 0x{flags:02x}")
    return fmt.Header(
        version=version,
        minor_version=minor,
        nonce=node0[fmt.NONCE_OFFSET : fmt.NONCE_OFFSET + fmt.NONCE_SIZE],
        metadata_mac=node0[fmt.MAC_OFFSET : fmt.MAC_OFFSET + fmt.MAC_SIZE],
        feature_flags=flags,
    )
