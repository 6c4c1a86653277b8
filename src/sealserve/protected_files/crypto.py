"""The two primitives of the format: the metadata-key KDF and node-level AES-128-GCM.

Every GCM operation in Gramine's format uses a 12-byte all-zero IV and no AAD (§1); that is
safe only because every key encrypts exactly one node once, so callers must never reuse a
node key for different content. Stateless and thread safe.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.cmac import CMAC

from sealserve.errors import InvalidArgument
from sealserve.protected_files.format import KEY_SIZE, MAC_SIZE, kdf_input

ZERO_IV = bytes(12)

__all__ = [
    "ZERO_IV",
    "AESGCM",
    "InvalidTag",
    "derive_metadata_key",
    "check_wrap_key",
    "gcm_encrypt",
    "gcm_decrypt",
]


def check_wrap_key(wrap_key: bytes) -> bytes:
    if len(wrap_key) != KEY_SIZE:
        raise InvalidArgument(f"wrap key must be {KEY_SIZE} bytes, got {len(wrap_key)}")
    return bytes(wrap_key)


def derive_metadata_key(wrap_key: bytes, nonce: bytes) -> bytes:
    """AES-CMAC(wrap_key, counter=1 ‖ label ‖ nonce ‖ 128) — NIST SP 800-108 (§5)."""
    mac = CMAC(algorithms.AES(wrap_key))
    mac.update(kdf_input(nonce))
    return mac.finalize()


def gcm_encrypt(key: bytes, plaintext: bytes) -> tuple[bytes, bytes]:
    """(ciphertext, tag) of `plaintext` under a single-use node key."""
    sealed = AESGCM(key).encrypt(ZERO_IV, plaintext, None)
    return sealed[:-MAC_SIZE], sealed[-MAC_SIZE:]


def gcm_decrypt(key: bytes, ciphertext: bytes, tag: bytes) -> bytes | None:
    """The plaintext, or None when the tag does not authenticate the ciphertext."""
    try:
        return AESGCM(key).decrypt(ZERO_IV, bytes(ciphertext) + bytes(tag), None)
    except InvalidTag:
        return None
