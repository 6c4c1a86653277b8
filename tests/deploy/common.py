"""Paths of the deployment files under test, and loading of the one helper script."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
GRAMINE = DEPLOY / "gramine"
DOCKER = DEPLOY / "docker"
KUBERNETES = DEPLOY / "kubernetes"


def load_script(path: Path) -> ModuleType:
    """Import a script of deploy/ (not a package) by its path."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
