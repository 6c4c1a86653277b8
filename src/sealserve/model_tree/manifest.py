"""The manifest of a protected model tree: what the tree must contain, exactly.

Gramine protects files one by one, so on its own it cannot see a file deleted, added, swapped
with a sibling, or replaced by an older encrypted version of itself. The manifest closes that
gap: it lists every file's relative path, size and SHA-256 of its plaintext, the tree's
directories, the path the tree was bound to, and a model id. It is stored in the tree as a
protected file itself (so it is encrypted and authenticated under the same wrap key).

What it cannot see on its own: the whole tree, manifest included, rolled back to an older
consistent version. The model id is there so that a key broker or deployment can pin it.
Immutable values; thread safe.
"""

from __future__ import annotations

import json
import posixpath
import re
import uuid
from dataclasses import dataclass
from functools import cached_property

from sealserve.errors import DataLoss

MANIFEST_NAME = ".sealserve-manifest"
MANIFEST_FORMAT = "sealserve-model-manifest/1"
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative, '/'-separated, normalized
    size: int
    sha256: str  # hex digest of the plaintext


@dataclass(frozen=True)
class ModelManifest:
    model_id: str
    bound_root: str  # the normalized output path every file's bound path starts with
    files: tuple[FileEntry, ...]
    directories: tuple[str, ...] = ()

    def entry(self, path: str) -> FileEntry | None:
        return self._by_path.get(path)

    @cached_property
    def _by_path(self) -> dict[str, FileEntry]:
        return {f.path: f for f in self.files}

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> bytes:
        doc = {
            "format": MANIFEST_FORMAT,
            "model_id": self.model_id,
            "bound_root": self.bound_root,
            "directories": list(self.directories),
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.files],
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes, name: str) -> ModelManifest:
        """Parse and validate; a manifest that is authentic but malformed is still refused."""
        try:
            doc = json.loads(raw)
            if doc.get("format") != MANIFEST_FORMAT:
                raise ValueError(f"unknown manifest format {doc.get('format')!r}")
            files = tuple(
                FileEntry(path=_relative(f["path"]), size=int(f["size"]), sha256=str(f["sha256"]))
                for f in doc["files"]
            )
            for f in files:
                if f.size < 0 or not _SHA256_HEX.match(f.sha256):
                    raise ValueError(f"bad entry for {f.path}")
            manifest = cls(
                model_id=str(doc["model_id"]),
                bound_root=str(doc["bound_root"]),
                files=files,
                directories=tuple(_relative(d) for d in doc.get("directories", [])),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DataLoss(f"manifest {name} is malformed: {exc}") from None
        if len(manifest._by_path) != len(files):
            raise DataLoss(f"manifest {name} lists a file twice")
        return manifest


def new_model_id() -> str:
    return str(uuid.uuid4())


def _relative(path: str) -> str:
    norm = posixpath.normpath(path)
    if (
        not isinstance(path, str)
        or path != norm
        or norm.startswith(("/", "../"))
        or norm in (".", "..", MANIFEST_NAME)
    ):
        raise ValueError(f"bad relative path {path!r}")
    return path
