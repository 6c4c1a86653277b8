"""docs/architecture.md stays true: the import contracts of pyproject.toml hold over the whole
package (`lint-imports`, as `make check` runs it), and the page names every contract."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def contracts() -> list[dict]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return config["tool"]["importlinter"]["contracts"]


def test_the_import_contracts_hold():
    result = subprocess.run(
        [LINT_IMPORTS, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Contracts: {len(contracts())} kept, 0 broken." in result.stdout


def test_the_architecture_page_names_every_contract():
    page = (ROOT / "docs" / "architecture.md").read_text()
    missing = [c["id"] for c in contracts() if f"`{c['id']}`" not in page]
    assert missing == []
