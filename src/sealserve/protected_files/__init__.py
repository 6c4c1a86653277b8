"""Gramine's protected-file format ("encrypted files"), byte-compatible with
`gramine-sgx-pf-crypt` and the Gramine runtime: versions 2 (Gramine ≥ 1.9) and 1 (≤ 1.8).

Pure: bytes and binary file objects in, bytes out; no TensorFlow, no network.
"""

from sealserve.protected_files.format import (
    DEFAULT_VERSION,
    KEY_SIZE,
    SUPPORTED_VERSIONS,
    encrypted_size,
    normalize_path,
)
from sealserve.protected_files.reader import (
    AuthenticationFailed,
    BoundPathMismatch,
    NotAProtectedFile,
    ProtectedFileReader,
    open_metadata_node,
)
from sealserve.protected_files.rekey import rekey_metadata_node
from sealserve.protected_files.writer import NodeKeys, RandomNodeKeys, write_protected

__all__ = [
    "DEFAULT_VERSION",
    "KEY_SIZE",
    "SUPPORTED_VERSIONS",
    "AuthenticationFailed",
    "BoundPathMismatch",
    "NodeKeys",
    "NotAProtectedFile",
    "ProtectedFileReader",
    "RandomNodeKeys",
    "encrypted_size",
    "normalize_path",
    "open_metadata_node",
    "rekey_metadata_node",
    "write_protected",
]
