"""Writer of Gramine protected files, byte-compatible with `gramine-sgx-pf-crypt encrypt`.

The MHT is written depth-first in post-order: an MHT node's data nodes first, then its child
subtrees, then the node itself, so every node is encrypted exactly once, as soon as the keys
and tags of its children are known. Memory is one 96-node group buffer plus one 4 KiB MHT
node per tree level (at most 5 for any file that fits in a uint64), whatever the file size.
The on-disk layout is Gramine's (§2), so writes land at computed offsets; the source must be
seekable, and the destination a fresh, seekable file (callers write to a temporary name).

Every node gets a fresh random key and the metadata a fresh nonce (§8), unless `NodeKeys`
are injected: tests reproduce Gramine's bytes exactly with the keys recovered from a vector.
Not thread safe.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import BinaryIO, Protocol

from sealserve.protected_files import format as fmt
from sealserve.protected_files.crypto import (
    AESGCM,
    ZERO_IV,
    check_wrap_key,
    derive_metadata_key,
    gcm_encrypt,
)
from sealserve.protected_files.format import RandomAccessSource

Progress = Callable[[int], None]


class NodeKeys(Protocol):
    """Where the writer gets its per-write randomness."""

    def nonce(self) -> bytes: ...

    def data_node_keys(self, first: int, count: int) -> bytes:
        """The keys of data nodes first..first+count-1, concatenated."""
        ...

    def mht_node_key(self, m: int) -> bytes: ...


class RandomNodeKeys:
    """Fresh CSPRNG keys for every node and a fresh KDF nonce (what Gramine does)."""

    def nonce(self) -> bytes:
        return os.urandom(fmt.NONCE_SIZE)

    def data_node_keys(self, first: int, count: int) -> bytes:
        return os.urandom(fmt.KEY_SIZE * count)  # one getrandom call per group

    def mht_node_key(self, m: int) -> bytes:
        return os.urandom(fmt.KEY_SIZE)


def write_protected(
    src: RandomAccessSource,
    size: int,
    dst: BinaryIO,
    wrap_key: bytes,
    bound_path: str | bytes,
    *,
    version: int = fmt.DEFAULT_VERSION,
    node_keys: NodeKeys | None = None,
    progress: Progress | None = None,
) -> None:
    """Encrypt `size` bytes of `src` (from offset 0) into `dst` as a protected file bound to
    `bound_path` (stored exactly as given: normalize it first with `format.normalize_path`
    to match Gramine's tool)."""
    _Writer(
        src, size, dst, wrap_key, bound_path, version, node_keys or RandomNodeKeys(), progress
    ).write()


class _Writer:
    def __init__(
        self,
        src: RandomAccessSource,
        size: int,
        dst: BinaryIO,
        wrap_key: bytes,
        bound_path: str | bytes,
        version: int,
        node_keys: NodeKeys,
        progress: Progress | None,
    ) -> None:
        if version not in fmt.SUPPORTED_VERSIONS:
            raise ValueError(f"unsupported format version {version}")
        self.src, self.size, self.dst = src, size, dst
        self.wrap_key = check_wrap_key(wrap_key)
        path = (
            bound_path.encode("utf-8", "surrogateescape")
            if isinstance(bound_path, str)
            else bytes(bound_path)
        )
        self.bound_path = fmt.check_bound_path(path)
        self.version = version
        self.keys = node_keys
        self.progress = progress
        self.data_nodes = fmt.data_node_count(size)
        self.mht_nodes = fmt.mht_node_count(size)
        # plaintext of one group, then its ciphertext; +16 so encrypt_into can put the tag
        # of the last node past its end (each tag is moved out before the next node)
        self.plain = bytearray(fmt.DATA_SLOTS_PER_MHT * fmt.NODE_SIZE)
        self.sealed = bytearray(fmt.DATA_SLOTS_PER_MHT * fmt.NODE_SIZE + fmt.MAC_SIZE)

    def write(self) -> None:
        inline = self._read(0, min(self.size, fmt.INLINE_DATA_SIZE))
        self._report(len(inline))
        root_key = root_mac = bytes(fmt.KEY_SIZE)
        if self.data_nodes:
            root_key, root_mac = self._write_subtree(0)
        metadata = fmt.Metadata(
            bound_path=self.bound_path,
            size=self.size,
            root_mht_key=root_key,
            root_mht_mac=root_mac,
            inline_data=inline,
        )
        self._put(0, seal_metadata_node(metadata, self.wrap_key, self.version, self.keys.nonce()))

    def _write_subtree(self, m: int) -> tuple[bytes, bytes]:
        """Write MHT m's data nodes, its child subtrees, then MHT m; return its (key, tag)."""
        mht = bytearray(fmt.NODE_SIZE)
        d0 = m * fmt.DATA_SLOTS_PER_MHT
        count = min(fmt.DATA_SLOTS_PER_MHT, self.data_nodes - d0)
        start = fmt.INLINE_DATA_SIZE + d0 * fmt.NODE_SIZE
        length = min(self.size - start, count * fmt.NODE_SIZE)
        plain = memoryview(self.plain)
        self._read_into(start, plain[:length])
        plain[length : count * fmt.NODE_SIZE] = bytes(count * fmt.NODE_SIZE - length)  # §7 pad

        sealed = memoryview(self.sealed)
        keys = self.keys.data_node_keys(d0, count)
        for i in range(count):
            key = keys[i * fmt.KEY_SIZE : (i + 1) * fmt.KEY_SIZE]
            node = i * fmt.NODE_SIZE
            tag_at = node + fmt.NODE_SIZE
            AESGCM(key).encrypt_into(
                ZERO_IV, plain[node:tag_at], None, sealed[node : tag_at + fmt.MAC_SIZE]
            )
            entry = i * fmt.ENTRY_SIZE
            mht[entry : entry + fmt.ENTRY_SIZE] = key + sealed[tag_at : tag_at + fmt.MAC_SIZE]
        self._put(fmt.data_node_physical(d0) * fmt.NODE_SIZE, sealed[: count * fmt.NODE_SIZE])
        self._report(length)

        for child in fmt.mht_children(m, self.mht_nodes):
            key, tag = self._write_subtree(child)
            entry = fmt.child_entry_offset(fmt.mht_parent(child)[1])
            mht[entry : entry + fmt.ENTRY_SIZE] = key + tag

        key = self.keys.mht_node_key(m)
        ciphertext, tag = gcm_encrypt(key, bytes(mht))
        self._put(fmt.mht_node_physical(m) * fmt.NODE_SIZE, ciphertext)
        return key, tag

    def _read(self, offset: int, length: int) -> bytes:
        buf = bytearray(length)
        self._read_into(offset, memoryview(buf))
        return bytes(buf)

    def _read_into(self, offset: int, out: memoryview) -> None:
        self.src.seek(offset)
        got = 0
        while got < len(out):
            n = self.src.readinto(out[got:])
            if not n:
                raise EOFError(f"source ended at {offset + got} of {self.size} bytes")
            got += n

    def _put(self, offset: int, data: bytes | memoryview) -> None:
        self.dst.seek(offset)
        self.dst.write(data)

    def _report(self, n: int) -> None:
        if self.progress is not None and n:
            self.progress(n)


def seal_metadata_node(
    metadata: fmt.Metadata, wrap_key: bytes, version: int, nonce: bytes
) -> bytes:
    """Node 0: the plaintext header and the metadata encrypted under KDF(wrap_key, nonce)."""
    ciphertext, tag = gcm_encrypt(derive_metadata_key(wrap_key, nonce), fmt.pack_metadata(metadata))
    header = fmt.Header(
        version=version,
        minor_version=fmt.MINOR_VERSION,
        nonce=nonce,
        metadata_mac=tag,
        feature_flags=0,
    )
    return (fmt.pack_header(header) + ciphertext).ljust(fmt.NODE_SIZE, b"\0")
