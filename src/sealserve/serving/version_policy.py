"""Which versions of a model should be loaded: TF Serving's version policies.

Pure functions over version numbers, tested with tables of cases. `latest { num_versions }`
(the default, 1), `all {}`, and `specific { versions }` follow
`config/model_server_config.proto`'s `FileSystemStoragePathSourceConfig.ServableVersionPolicy`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class VersionPolicy:
    kind: str = "latest"  # "latest" | "all" | "specific"
    num_versions: int = 1
    versions: frozenset[int] = frozenset()

    def aspired(self, available: Iterable[int]) -> set[int]:
        """The versions to serve, given those present on disk."""
        present = set(available)
        if self.kind == "all":
            return present
        if self.kind == "specific":
            return present & self.versions
        return set(sorted(present, reverse=True)[: max(self.num_versions, 1)])

    def describe(self) -> str:
        if self.kind == "all":
            return "all"
        if self.kind == "specific":
            return "specific " + ",".join(map(str, sorted(self.versions)))
        return f"latest {self.num_versions}"


LATEST_ONE = VersionPolicy()
