"""The documentation site builds (`mkdocs build --strict`, mkdocs.yml), lists every guide,
every relative link of the README and the guides leads to a file of the repository, and every
command and flag of `sealserve` is documented somewhere."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))
LINK = re.compile(r"\]\(([^)\s]+)\)")


def nav_pages() -> set[str]:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    return {page for entry in config["nav"] for page in entry.values()}


def test_every_guide_is_in_the_site_navigation() -> None:
    assert {Path(p).name for p in PAGES} == nav_pages()


@pytest.mark.parametrize("page", ["README.md", *PAGES])
def test_relative_links_lead_to_files(page: str) -> None:
    text = (ROOT / page).read_text()
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)  # code is not links
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = target.split("#", 1)[0]
        if not (ROOT / page).parent.joinpath(path).exists():
            broken.append(target)
    assert not broken, f"{page} links to missing files: {broken}"


@pytest.mark.integration
def test_site_builds_in_strict_mode(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "quickstart" / "index.html").exists()


def _options(parser: argparse.ArgumentParser, command: list[str]) -> Iterator[tuple[str, list]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield "sealserve " + " ".join([*command, name]), []
                yield from _options(sub, [*command, name])
        elif action.option_strings and not {"--help", "--version"} & set(action.option_strings):
            yield "sealserve " + " ".join(command), action.option_strings


def test_every_command_and_flag_is_documented() -> None:
    """Each command of `sealserve` is named, and each of its flags (one of its spellings)
    appears, in the README or a guide: a new flag comes with its documentation."""
    from sealserve.cli import build_parser

    text = "".join((ROOT / page).read_text() for page in ["README.md", *PAGES])
    undocumented = []
    for command, spellings in _options(build_parser(), []):
        if not spellings:
            if command not in text:
                undocumented.append(command)
        elif not any(re.search(re.escape(s) + r"(?![\w-])", text) for s in spellings):
            undocumented.append(f"{command} {spellings[-1]}")
    assert not undocumented, f"not in README.md or docs/: {sorted(set(undocumented))}"
