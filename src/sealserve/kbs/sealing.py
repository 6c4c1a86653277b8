"""The KBS master key and what it authenticates: secrets, policies, the store's manifest and
the audit chain, each under its own key derived from the master key (HKDF-SHA256, RFC 5869,
one `info` label per purpose), so no key serves two purposes.

- Secrets: AES-256-GCM, fresh 96-bit nonce per write, associated data
  `"sealserve-kbs-resource-v2\\0" + path + "\\0" + version (8 bytes, big-endian)`: a
  ciphertext moved to another path, or an older ciphertext put back under the current
  version, does not decrypt.
- Policies and the manifest: HMAC-SHA256 over the RFC 8785 canonical JSON of what they bind
  (a policy: path, version, format, text).
- Audit records: HMAC-SHA256 of the record's SHA-256 chain hash (`kbs.audit`).

Anything that fails authentication raises `TamperDetected` (a `DataLoss`, saying what was hit):
the database was written by someone without the master key.

The master key's bytes and the derived keys never appear in `repr`, logs or messages.
Immutable after construction; thread-safe.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import stat
from pathlib import Path
from typing import Any

import rfc8785
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sealserve.errors import AlreadyExists, DataLoss, FailedPrecondition, InvalidArgument
from sealserve.fsio import PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, atomic_output_file, read_user_file

log = logging.getLogger(__name__)

MASTER_KEY_SIZE = 32
_NONCE_SIZE = 12
_RESOURCE_AAD = b"sealserve-kbs-resource-v2\x00"
_LEGACY_RESOURCE_AAD = b"sealserve-kbs-resource-v1\x00"  # schema 1, for `kbs migrate`
_AUDIT_MAC_PREFIX = b"sealserve-kbs-audit-v2\x00"


class TamperDetected(DataLoss):
    """A stored record failed authentication under the master key. `what` names the kind of
    record ("resource", "policy", "manifest", "audit") for metrics."""

    def __init__(self, what: str, message: str) -> None:
        super().__init__(message)
        self.what = what


def _derive(master: bytes, label: str) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=f"sealserve-kbs {label}".encode()
    ).derive(master)


class MasterKey:
    """The KBS master key (32 bytes) and the keys derived from it (see the module docstring)."""

    __slots__ = ("_legacy", "_resources", "_policy_mac", "_audit_mac")

    def __init__(self, key: bytes) -> None:
        if len(key) != MASTER_KEY_SIZE:
            raise InvalidArgument(f"the KBS master key must be {MASTER_KEY_SIZE} bytes")
        key = bytes(key)
        self._legacy = AESGCM(key)  # schema 1 encrypted under the master key itself
        self._resources = AESGCM(_derive(key, "resource aead v2"))
        self._policy_mac = _derive(key, "record mac v2")
        self._audit_mac = _derive(key, "audit mac v2")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> MasterKey:
        """Read a 32-byte key file; refuse one readable by group or others (secure default)."""
        path = Path(path)
        raw = read_user_file(path, "KBS master key file")
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise FailedPrecondition(
                f"KBS master key file {path} is accessible to other users (mode "
                f"{mode & 0o777:o}); chmod 600 it"
            )
        if len(raw) != MASTER_KEY_SIZE:
            raise InvalidArgument(
                f"KBS master key file {path} must hold {MASTER_KEY_SIZE} raw bytes "
                f"(it has {len(raw)})"
            )
        return cls(raw)

    # --- secrets --------------------------------------------------------------------------

    @staticmethod
    def _resource_aad(path: str, version: int) -> bytes:
        return _RESOURCE_AAD + path.encode() + b"\x00" + int(version).to_bytes(8, "big")

    def seal_resource(self, path: str, version: int, plaintext: bytes) -> bytes:
        nonce = secrets.token_bytes(_NONCE_SIZE)
        aad = self._resource_aad(path, version)
        return nonce + self._resources.encrypt(nonce, plaintext, aad)

    def open_resource(self, path: str, version: int, blob: bytes) -> bytes:
        try:
            aad = self._resource_aad(path, version)
            return self._resources.decrypt(blob[:_NONCE_SIZE], blob[_NONCE_SIZE:], aad)
        except (InvalidTag, ValueError):
            log.error(
                "TAMPERING: stored resource %s version %d does not authenticate under the "
                "master key (its ciphertext was replaced, moved or rolled back)",
                path,
                version,
            )
            raise TamperDetected(
                "resource", f"stored resource {path} cannot be authenticated"
            ) from None

    def open_legacy_resource(self, path: str, blob: bytes) -> bytes:
        """A schema-1 ciphertext (AAD = path only), for the one-time migration."""
        try:
            aad = _LEGACY_RESOURCE_AAD + path.encode()
            return self._legacy.decrypt(blob[:_NONCE_SIZE], blob[_NONCE_SIZE:], aad)
        except (InvalidTag, ValueError):
            raise TamperDetected(
                "resource", f"stored resource {path} cannot be authenticated"
            ) from None

    # --- records --------------------------------------------------------------------------

    def record_mac(self, kind: str, fields: dict[str, Any]) -> str:
        """HMAC of a policy or the manifest: `kind` keeps the two from standing in for each
        other."""
        body = rfc8785.dumps({"kind": kind, **fields})
        return hmac.new(self._policy_mac, body, hashlib.sha256).hexdigest()

    def check_record_mac(self, kind: str, fields: dict[str, Any], mac: Any) -> bool:
        return isinstance(mac, str) and hmac.compare_digest(self.record_mac(kind, fields), mac)

    def audit_mac(self, record_hash: str) -> str:
        return hmac.new(
            self._audit_mac, _AUDIT_MAC_PREFIX + record_hash.encode(), hashlib.sha256
        ).hexdigest()

    def check_audit_mac(self, record_hash: str, mac: Any) -> bool:
        return isinstance(mac, str) and hmac.compare_digest(self.audit_mac(record_hash), mac)

    def __repr__(self) -> str:
        return "MasterKey(<redacted>)"


def generate_master_key_file(path: str | os.PathLike[str]) -> None:
    """Write 32 fresh random bytes to a new file with mode 0600 (never replaces one)."""
    path = Path(path)
    path.parent.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    if path.exists():
        raise AlreadyExists(f"{path} already exists; refusing to replace a KBS master key")
    with atomic_output_file(path, mode=PRIVATE_FILE_MODE) as out:
        out.write(secrets.token_bytes(MASTER_KEY_SIZE))
