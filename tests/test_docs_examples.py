"""The documentation's examples, executed: every ```sh and ```python block of the pages in
`EXECUTED_PAGES` runs, in order, in one bash session in a fresh temporary directory with the
installed `sealserve` first on PATH, so a guide cannot drift from the code.

Conventions the pages follow (docs/contributing-docs.md says the same for authors):
- A block whose info string says `placeholder` (```sh placeholder) or that follows an
  `<!-- placeholder -->` line is illustration only (made-up file names, hardware we lack) and
  is not run; so is a block after an `<!-- not run: REASON -->` line (real commands the suite
  runs elsewhere, e.g. `make demo` in tests/test_demo.py).
- In a ```sh block, comment lines directly below a command (no blank line between) are what
  that command prints: the test compares them with its output, whitespace ignored (REST bodies
  are printed over several lines), `…` standing for anything. A comment after a blank line, or
  at the end of a command line, is prose.
- A ```python block runs with the venv's interpreter in the same directory.
- A server started in the background (`&`) is stopped by the test with the whole session.
- Ports 8500, 8501 and 8443 are replaced by free loopback ports, so the suite can run them
  next to other servers.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness import free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

# Pages whose examples run, in order within each page. A page of deployment steps for hardware
# or clusters we do not have here is not listed; its placeholders would be all of it.
EXECUTED_PAGES = ["docs/quickstart.md", "docs/owner.md"]

FENCE = re.compile(r"^```(\S*)(.*)$")
DOC_PORTS = ("8500", "8501", "8443")
TIMEOUT_SECONDS = 600


@dataclass
class Block:
    page: str
    line: int
    language: str
    text: str


def blocks(page: str) -> list[Block]:
    """The runnable code blocks of a page: sh and python, placeholders left out."""
    found: list[Block] = []
    lines = (ROOT / page).read_text().splitlines()
    index = 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        if not match:
            index += 1
            continue
        language, rest = match.group(1), match.group(2)
        start = index
        index += 1
        body: list[str] = []
        while index < len(lines) and not lines[index].startswith("```"):
            body.append(lines[index])
            index += 1
        index += 1
        previous = next((lines[i] for i in range(start - 1, -1, -1) if lines[i].strip()), "")
        placeholder = (
            "placeholder" in rest
            or "<!-- placeholder -->" in previous
            or previous.startswith("<!-- not run")
        )
        if language in ("sh", "python") and not placeholder:
            found.append(Block(page, start + 1, language, "\n".join(body)))
    return found


def logical_lines(text: str) -> list[tuple[str, list[str]]]:
    """(command, the output shown below it) pairs of a sh block; prose comments are dropped,
    commands joined across backslash continuations."""
    result: list[tuple[str, list[str]]] = []
    lines = text.splitlines()
    index = 0
    after_command = False
    while index < len(lines):
        line = lines[index]
        stripped = line.strip()
        index += 1
        if stripped.startswith("#"):
            if after_command and result:
                result[-1][1].append(stripped[1:].strip())
            continue
        if not stripped:
            after_command = False
            continue
        command = line
        while command.rstrip().endswith("\\") and index < len(lines):
            command = command.rstrip()[:-1] + " " + lines[index].strip()
            index += 1
        result.append((command, []))
        after_command = True
    return result


def expected_pattern(shown: list[str]) -> re.Pattern[str]:
    text = re.sub(r"\s+", "", "".join(shown))
    parts = [re.escape(part) for part in re.split(r"…|\.\.\.", text)]
    return re.compile(".*?".join(parts), re.DOTALL)


def script(page_blocks: list[Block], ports: dict[str, str]) -> tuple[str, list[tuple]]:
    """One bash script running every block; each command with shown output is framed by
    markers so its output can be told apart."""
    out = ["set -euo pipefail"]
    checks: list[tuple] = []
    for block in page_blocks:
        out.append(f"echo '@@block {block.page}:{block.line}' >&2")
        if block.language == "python":
            out.append(f"python - <<'__DOC_PYTHON__'\n{block.text}\n__DOC_PYTHON__")
            continue
        for command, shown in logical_lines(block.text):
            if shown:
                mark = len(checks)
                checks.append((block, command, shown))
                out.append(f"echo '@@start {mark}'")
                out.append(f"{{ {command} ; }} 2>&1")
                out.append(f"echo '@@end {mark}'")
            else:
                out.append(command)
    text = "\n".join(out) + "\n"
    for doc_port, port in ports.items():
        text = re.sub(rf"\b{doc_port}\b", port, text)
    return text, checks


@pytest.mark.e2e
@pytest.mark.parametrize("page", EXECUTED_PAGES)
def test_page_examples_run_and_print_what_they_show(page: str, tmp_path: Path) -> None:
    page_blocks = blocks(page)
    assert page_blocks, f"{page} has no runnable example"
    ports = {doc_port: str(free_port()) for doc_port in DOC_PORTS}
    text, checks = script(page_blocks, ports)
    (tmp_path / "doc-example.sh").write_text(text)
    env = {
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
    }
    process = subprocess.Popen(
        ["bash", str(tmp_path / "doc-example.sh")],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its background servers share its process group
    )
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT_SECONDS)
    finally:
        with contextlib.suppress(ProcessLookupError):  # what the page left running
            os.killpg(process.pid, signal.SIGTERM)
    last_block = [line for line in stderr.splitlines() if line.startswith("@@block")][-1:]
    assert process.returncode == 0, (
        f"{page}: an example failed (exit {process.returncode}) in {last_block}\n"
        f"stdout:\n{stdout[-3000:]}\nstderr:\n{stderr[-3000:]}"
    )
    for mark, (block, command, shown) in enumerate(checks):
        printed = stdout.split(f"@@start {mark}\n", 1)[1].split(f"@@end {mark}\n", 1)[0]
        for doc_port, port in ports.items():
            printed = printed.replace(port, doc_port)
        assert expected_pattern(shown).search(re.sub(r"\s+", "", printed)), (
            f"{block.page}:{block.line}: `{command.strip()}` printed\n{printed}\n"
            f"but the page shows\n" + "\n".join(shown)
        )


def test_output_comments_are_told_from_prose() -> None:
    pairs = logical_lines(
        "# prose\nsealserve verify x \\\n    y\n# OK: model …\n\n# more prose\necho hi  # note\n"
    )
    assert pairs == [("sealserve verify x  y", ["OK: model …"]), ("echo hi  # note", [])]
    assert expected_pattern(["OK: model …, 4 files"]).search("OK:model6f1c,4files")


def test_the_readme_quickstart_is_the_executed_one() -> None:
    """The README's quickstart is docs/quickstart.md's, block for block, so running the page
    runs the README (and README.md has no other runnable block)."""
    readme = [(b.language, b.text) for b in blocks("README.md")]
    guide = [(b.language, b.text) for b in blocks("docs/quickstart.md")]
    assert readme == guide
