"""Gramine protected-file layout: constants, node arithmetic, the plaintext header, the
metadata structure and Gramine's path normalization.

Pure functions over integers and bytes; no I/O, no crypto. Section numbers (§) refer to
`shared/reference/gramine-protected-files.md`, which follows Gramine's
`common/src/protected_files/protected_files_format.h`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Protocol

from sealserve.errors import InvalidArgument

# §1 constants
NODE_SIZE = 4096
KEY_SIZE = 16
MAC_SIZE = 16
NONCE_SIZE = 32
FILE_ID = b"GRAFS_PF"  # uint64 0x46505f5346415247, little-endian
GRAPHENE_FILE_ID = b"GRAPH_PF"  # pre-1.0 Graphene files: recognised only to say so
MINOR_VERSION = 0
INLINE_DATA_SIZE = 3072  # MD_USER_DATA_SIZE: plaintext held inside the metadata node
PATH_FIELD_SIZE = 772  # PATH_MAX_SIZE; NUL-terminated, so at most 771 path bytes
MAX_PATH_BYTES = PATH_FIELD_SIZE - 1
DATA_SLOTS_PER_MHT = 96
CHILD_SLOTS_PER_MHT = 32
ENTRY_SIZE = KEY_SIZE + MAC_SIZE
FLAG_HAS_PENDING_WRITE = 0x01
SUPPORTED_VERSIONS = (1, 2)
DEFAULT_VERSION = 2

# §4 decrypted metadata (3884 bytes)
METADATA_PLAIN_SIZE = PATH_FIELD_SIZE + 8 + KEY_SIZE + MAC_SIZE + INLINE_DATA_SIZE
_METADATA_FIXED = struct.Struct(f"<{PATH_FIELD_SIZE}sQ{KEY_SIZE}s{MAC_SIZE}s")

# §5 KDF input: counter, 64-byte label, nonce, output length in bits
KDF_LABEL = b"SGX-PROTECTED-FS-METADATA-KEY"
_KDF_INPUT = struct.Struct(f"<I64s{NONCE_SIZE}sI")


class RandomAccessSource(Protocol):
    """What the reader and writer need of a stored file: a seekable binary file."""

    def seek(self, offset: int, whence: int = 0, /) -> int: ...

    def tell(self) -> int: ...

    def read(self, size: int = -1, /) -> bytes: ...

    def readinto(self, buffer: memoryview, /) -> int | None: ...


@dataclass(frozen=True)
class HeaderLayout:
    """Where the header fields of one major version sit in node 0 (§3)."""

    version: int
    encrypted_offset: int  # start of the encrypted metadata
    has_flags: bool

    @property
    def encrypted_end(self) -> int:
        return self.encrypted_offset + METADATA_PLAIN_SIZE


LAYOUTS = {
    1: HeaderLayout(version=1, encrypted_offset=58, has_flags=False),
    2: HeaderLayout(version=2, encrypted_offset=59, has_flags=True),
}
# Offsets shared by both versions
MAJOR_OFFSET = 8
MINOR_OFFSET = 9
NONCE_OFFSET = 10
MAC_OFFSET = 42
FLAGS_OFFSET = 58  # v2 only


@dataclass(frozen=True)
class Header:
    """The plaintext part of node 0. None of it is authenticated by GCM (§3)."""

    version: int
    minor_version: int
    nonce: bytes
    metadata_mac: bytes
    feature_flags: int

    @property
    def layout(self) -> HeaderLayout:
        return LAYOUTS[self.version]


@dataclass(frozen=True)
class Metadata:
    """The decrypted metadata (§4). `inline_data` is exactly the first min(size, 3072)
    plaintext bytes."""

    bound_path: bytes
    size: int
    root_mht_key: bytes
    root_mht_mac: bytes
    inline_data: bytes


def kdf_input(nonce: bytes) -> bytes:
    """The 104-byte SP 800-108 input that AES-CMAC under the wrap key turns into the
    metadata key (§5)."""
    return _KDF_INPUT.pack(1, KDF_LABEL, nonce, KEY_SIZE * 8)


def pack_header(header: Header) -> bytes:
    """The plaintext header bytes that precede the encrypted metadata."""
    out = FILE_ID + bytes([header.version, header.minor_version]) + header.nonce
    out += header.metadata_mac
    if header.layout.has_flags:
        out += bytes([header.feature_flags])
    return out


def pack_metadata(metadata: Metadata) -> bytes:
    fixed = _METADATA_FIXED.pack(
        metadata.bound_path, metadata.size, metadata.root_mht_key, metadata.root_mht_mac
    )
    return fixed + metadata.inline_data.ljust(INLINE_DATA_SIZE, b"\0")


def unpack_metadata(plain: bytes) -> Metadata:
    path_field, size, root_key, root_mac = _METADATA_FIXED.unpack_from(plain)
    inline = plain[_METADATA_FIXED.size : _METADATA_FIXED.size + min(size, INLINE_DATA_SIZE)]
    return Metadata(
        bound_path=path_field.split(b"\0", 1)[0],
        size=size,
        root_mht_key=root_key,
        root_mht_mac=root_mac,
        inline_data=bytes(inline),
    )


# §2 node arithmetic ---------------------------------------------------------------------


def data_node_count(size: int) -> int:
    """Number of data nodes holding plaintext beyond the inline 3072 bytes."""
    return max(0, -(-(size - INLINE_DATA_SIZE) // NODE_SIZE))


def mht_node_count(size: int) -> int:
    """MHT node m exists iff data node 96·m exists."""
    return -(-data_node_count(size) // DATA_SLOTS_PER_MHT)


def data_node_physical(d: int) -> int:
    """Physical node number of logical data node d: each MHT precedes its 96 data nodes."""
    return d + 2 + d // DATA_SLOTS_PER_MHT


def mht_node_physical(m: int) -> int:
    return 1 + (DATA_SLOTS_PER_MHT + 1) * m


def mht_parent(m: int) -> tuple[int, int]:
    """(parent MHT, child slot 0..31) of MHT m ≥ 1."""
    return (m - 1) // CHILD_SLOTS_PER_MHT, (m - 1) % CHILD_SLOTS_PER_MHT


def mht_children(m: int, mht_count: int) -> range:
    first = CHILD_SLOTS_PER_MHT * m + 1
    return range(first, min(first + CHILD_SLOTS_PER_MHT, mht_count))


def encrypted_size(size: int) -> int:
    """Length of the file Gramine's tool writes for `size` plaintext bytes (§2)."""
    n = data_node_count(size)
    if n == 0:
        return NODE_SIZE
    return (data_node_physical(n - 1) + 1) * NODE_SIZE


def data_entry_offset(d: int) -> int:
    """Offset of data node d's {key, mac} entry inside its MHT node's plaintext."""
    return (d % DATA_SLOTS_PER_MHT) * ENTRY_SIZE


def child_entry_offset(slot: int) -> int:
    return (DATA_SLOTS_PER_MHT + slot) * ENTRY_SIZE


# §10 path binding -----------------------------------------------------------------------


def normalize_path(path: str | bytes) -> bytes:
    """Gramine's `get_norm_path`: lexical normalization of the path bound into a file.

    Empty and `.` components are dropped, `..` removes the previous component (kept at the
    start of a relative path, dropped after a leading `/`), a trailing `/` is dropped and a
    leading `/` kept. Nothing is resolved against the file system or the cwd. Gramine returns
    an empty string where `posixpath.normpath` returns `.`, and collapses a leading `//`.
    """
    raw = path.encode("utf-8", "surrogateescape") if isinstance(path, str) else bytes(path)
    absolute = raw.startswith(b"/")
    parts: list[bytes] = []
    for part in raw.split(b"/"):
        if part in (b"", b"."):
            continue
        if part == b"..":
            if parts and parts[-1] != b"..":
                parts.pop()
            elif not absolute:
                parts.append(part)
            continue
        parts.append(part)
    return (b"/" if absolute else b"") + b"/".join(parts)


def check_bound_path(path: bytes) -> bytes:
    if len(path) > MAX_PATH_BYTES:
        raise InvalidArgument(
            f"path is too long to bind into a protected file ({len(path)} bytes, "
            f"at most {MAX_PATH_BYTES}): {path.decode('utf-8', 'replace')[:60]}..."
        )
    if b"\0" in path:
        raise InvalidArgument("path to bind contains a NUL byte")
    return path


def display_path(path: bytes) -> str:
    return path.decode("utf-8", "backslashreplace")
