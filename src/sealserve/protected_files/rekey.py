"""Wrap-key rotation: re-seal only the metadata node (node 0) of a protected file.

The wrap key protects exactly one thing, the metadata node (KDF nonce → metadata key → GCM of
path, size, root MHT key and the first 3072 bytes). Rotating it decrypts that node with the
old key and seals it again with a fresh nonce under the new key; every other node — and so
every node key — stays as it was. Like a KMS rotating a key-encryption key, this retires the
old wrap key for new copies but does not protect against anyone who already held the old key
*and* a copy of the file: they could have kept the root MHT key, which still opens the data
nodes. A full re-encryption (fresh node keys) is `write_protected` over a reader.
Pure: bytes in, bytes out.
"""

from __future__ import annotations

import os

from sealserve.protected_files import format as fmt
from sealserve.protected_files.reader import open_metadata_node
from sealserve.protected_files.writer import seal_metadata_node


def rekey_metadata_node(
    node0: bytes,
    old_wrap_key: bytes,
    new_wrap_key: bytes,
    *,
    bound_path: bytes | None = None,
    nonce: bytes | None = None,
    name: str = "<protected file>",
) -> bytes:
    """Node 0 authenticated under `old_wrap_key` and re-sealed under `new_wrap_key` with a
    fresh nonce, bound to `bound_path` when given (else to the same path as before)."""
    header, metadata = open_metadata_node(node0, old_wrap_key, name)
    if bound_path is not None:
        metadata = fmt.Metadata(
            bound_path=fmt.check_bound_path(bound_path),
            size=metadata.size,
            root_mht_key=metadata.root_mht_key,
            root_mht_mac=metadata.root_mht_mac,
            inline_data=metadata.inline_data,
        )
    return seal_metadata_node(
        metadata, new_wrap_key, header.version, nonce or os.urandom(fmt.NONCE_SIZE)
    )
