"""Who may change the served models over the network (`ModelService.HandleReloadConfigRequest`)
and which base paths they may name.

TF Serving leaves the reload RPC open to anyone who reaches the gRPC port; on a server that
holds other people's models that lets any requester unload every model or probe the file
system through error messages. Here it is refused unless the owner configures an
administrator: the SHA-256 fingerprint of a client certificate (`--admin_client_cert_sha256`,
repeatable). A pin on the command line is part of the measured launch configuration, where a
CA file's content would be the host's to swap. The admin's certificate must also pass the mTLS
handshake (chain to the ssl config's `custom_ca`), so it is a client certificate the owner
issued and kept apart from the requesters'.

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

from sealserve.errors import InvalidArgument, PermissionDenied

ADMIN_PIN_FLAG = "--admin_client_cert_sha256"
ADMIN_ROOT_FLAG = "--admin_base_path_root"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")

NOT_ALLOWED = (
    "model management is not allowed for this client (only the administrator certificate "
    f"pinned with {ADMIN_PIN_FLAG} may reload the model config)"
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
    base_path_root: str | None = None
    started_with: Mapping[str, str] = field(default_factory=dict)
    #: any client, no certificate needed: only for tests and trusted networks
    insecure_any_client: bool = False

    @property
    def enabled(self) -> bool:
        return self.insecure_any_client or bool(self.admin_fingerprints)

    def authorize(
        self, client_fingerprint: str | None, base_paths: Iterable[tuple[str, str]]
    ) -> None:
        """Raise `PermissionDenied` unless this client may reload to these (model, base path)
        pairs. Nothing here touches the file system."""
        if not self.insecure_any_client and (
            client_fingerprint is None or client_fingerprint not in self.admin_fingerprints
        ):
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
