"""Who may change the served models over the network (`ModelService.HandleReloadConfigRequest`)
and which base paths they may name.

TF Serving leaves the reload RPC open to anyone who reaches the gRPC port; on a server that
holds other people's models that lets any requester unload every model or probe the file
system through error messages. Here it is refused unless the owner configures an
administrator credential, kept apart from the requesters' certificates:

- the SHA-256 fingerprint of one client certificate (`--admin_client_cert_sha256`,
  repeatable; a pin on the command line is part of the measured launch configuration), or
- an administrators' CA (`--admin_client_ca`, a PEM file whose content the measurement
  covers): any client certificate it issued is an admin. The server also accepts that CA in
  the mTLS handshake, so admin certificates need not come from the requesters' `custom_ca`.

Either way the caller is known by the client certificate its mTLS handshake verified.

Every base path of a reload must lie under `--admin_base_path_root` (checked lexically,
before anything touches the file system) or be the one the model was started with; the
refusal reads the same whether the path exists or not.

Values are immutable; `ModelManagementPolicy.authorize` is pure and thread safe.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from sealserve.errors import InvalidArgument, PermissionDenied

ADMIN_PIN_FLAG = "--admin_client_cert_sha256"
ADMIN_CA_FLAG = "--admin_client_ca"
ADMIN_ROOT_FLAG = "--admin_base_path_root"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")

NOT_ALLOWED = (
    "model management is not allowed for this client (only an administrator certificate, "
    f"pinned with {ADMIN_PIN_FLAG} or issued by {ADMIN_CA_FLAG}, may reload the model config)"
)


def parse_fingerprint(text: str) -> str:
    """A SHA-256 certificate fingerprint as lowercase hex; colons (openssl's form) allowed."""
    value = text.strip().lower().replace(":", "")
    if not _HEX64.match(value):
        raise InvalidArgument(
            f"{ADMIN_PIN_FLAG} takes a SHA-256 certificate fingerprint (64 hex digits, e.g. "
            "`openssl x509 -noout -fingerprint -sha256 -in admin.pem`)"
        )
    return value


def certificate_fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


@dataclass(frozen=True)
class ModelManagementPolicy:
    """The default refuses every reload. `started_with` maps each model of the measured
    start-up configuration to its base path (always allowed for that model)."""

    admin_fingerprints: frozenset[str] = frozenset()
    admin_authorities: tuple[x509.Certificate, ...] = ()
    base_path_root: str | None = None
    started_with: Mapping[str, str] = field(default_factory=dict)
    #: any client, no certificate needed: only for tests and trusted networks
    insecure_any_client: bool = False

    @property
    def enabled(self) -> bool:
        return self.insecure_any_client or bool(self.admin_fingerprints or self.admin_authorities)

    def is_admin(self, client_certificate: bytes | None) -> bool:
        """Whether the client certificate (DER) the handshake verified is an admin's."""
        if client_certificate is None:
            return False
        if certificate_fingerprint(client_certificate) in self.admin_fingerprints:
            return True
        if not self.admin_authorities:
            return False
        try:
            leaf = x509.load_der_x509_certificate(client_certificate)
            verifier = (
                PolicyBuilder().store(Store(list(self.admin_authorities))).build_client_verifier()
            )
            verifier.verify(leaf, [])
        except (ValueError, VerificationError):
            return False
        return True

    def authorize(
        self, client_certificate: bytes | None, base_paths: Iterable[tuple[str, str]]
    ) -> None:
        """Raise `PermissionDenied` unless this client may reload to these (model, base path)
        pairs. Nothing here touches the file system."""
        if not self.insecure_any_client and not self.is_admin(client_certificate):
            raise PermissionDenied(NOT_ALLOWED)
        for name, base_path in base_paths:
            if self.started_with.get(name) == base_path:
                continue
            if not self._under_root(base_path):
                raise PermissionDenied(
                    f"base_path of model {name[:64]} is not under the model management root "
                    f"(set with {ADMIN_ROOT_FLAG})"
                )

    def _under_root(self, base_path: str) -> bool:
        if self.base_path_root is None or not base_path.startswith("/"):
            return False
        if any(part == ".." for part in base_path.split("/")):
            return False
        root = posixpath.normpath(self.base_path_root)
        path = posixpath.normpath(base_path)
        return path == root or path.startswith(root.rstrip("/") + "/")
