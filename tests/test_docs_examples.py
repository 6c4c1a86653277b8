"""The documentation's examples, executed: every shell and Python block of the pages in
`EXECUTED_PAGES` runs, in order, in one bash session per page in a fresh temporary directory
with the installed `sealserve` first on PATH, and what each shows it prints is compared with
what it prints, so a guide cannot drift from the code.

Conventions the pages follow (authors: read these before writing an example):
- Shell blocks are ```sh (also ```bash, ```shell, ```console); Python blocks ```python (or
  ```py). Other fences (config files, output listings) are not run.
- A block that cannot run here says so **visibly**, in its first line: a comment starting
  `# placeholder` (made-up names the reader replaces) or `# not run` followed by the reason
  (`# not run here: needs SGX hardware`, `# not run here: tests/test_cluster.py runs it`).
  Invisible markers (```sh placeholder, `<!-- placeholder -->`, `<!-- not run: … -->`) are
  refused by `test_skipped_examples_say_so_visibly`: a reader must see what not to paste.
- What a reader has already done before a page (the quickstart's first steps, a server
  running) is a hidden set-up block: an HTML comment whose first line is
  `<!-- test-only: WHY` and whose following lines, up to `-->`, are shell commands run at
  that point of the page. Readers of the page or the site do not see it. Shared set-up
  lives in `tests/docs_setup/*.sh`; a hidden block sources it: `. "$DOCS_SETUP/NAME.sh"`.
- In a shell block, comment lines directly below a command (no blank line between) are what
  that command prints, stdout and stderr together: the test compares them with ALL of its
  output, whitespace ignored (REST bodies are printed over several lines), `…` standing for
  anything. A comment after a blank line, or at the end of a command line, is prose.
- In a Python block, the comment lines ending the block directly below its last statement
  are what the block prints, compared the same way. Each Python block runs in its own
  interpreter (the venv's) in the page's directory.
- curl runs with `--no-progress-meter` (from `$HOME/.curlrc`), as a reader at a terminal
  sees it: curl draws its meter only when its output is not a terminal.
- Normalised before comparing: the page's ports (see `DOC_PORTS`: the suite replaces them
  with free loopback ports so pages run side by side, and maps them back in the output) and
  the page's temporary directory (printed as `.`). Nothing else: write `…` where a value
  varies (times, ids, the last digits of a float).
- A server started in the background (`&`) is waited for by the page itself (poll its log
  or port; no fixed sleeps) and stopped by the page at its end; the test also stops the
  whole session's process group, whatever happens.
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
DOCS_SETUP = ROOT / "tests" / "docs_setup"

# Pages whose examples run, in order within each page; a block that cannot run here (hardware,
# a container engine, a cluster) says so in its first line.
EXECUTED_PAGES = [
    "docs/quickstart.md",
    "docs/owner.md",
    "docs/benchmarks.md",
    "docs/attestation.md",
    "docs/key-broker.md",
    "docs/coming-from-gramine.md",
    "docs/deployment.md",
    "docs/serving.md",
    "docs/requester.md",
    "docs/model-lifecycle.md",
    "docs/openvino.md",
]
# Every page of the documentation. One not in EXECUTED_PAGES has nothing to run here (diagrams,
# tables, a demo the suite runs elsewhere): each block it has says visibly why it is not run.
# The README's runnable blocks are the quickstart's (test_the_readme_quickstart_is_...).
ALL_PAGES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^```(\S*)(.*)$")
SHELL = {"sh", "bash", "shell", "console"}
PYTHON = {"python", "py"}
HIDDEN_START = "<!-- test-only"
SKIP_COMMENT = re.compile(r"^#\s*(placeholder|not run)\b", re.IGNORECASE)
INVISIBLE_SKIP_MARKERS = ("<!-- placeholder", "<!-- not run")
# The ports pages may use; each page gets free loopback ports in their place.
DOC_PORTS = ("8500", "8501", "8502", "8503", "8510", "8511", "8443", "8444", "4433")
TIMEOUT_SECONDS = 900


@dataclass
class Block:
    page: str
    line: int
    language: str  # "sh" or "python"
    text: str
    hidden: bool = False  # a `<!-- test-only` set-up block
    skipped: bool = False  # `# placeholder` / `# not run` (or an invisible legacy marker)
    visibly_marked: bool = True


def all_blocks(page: str) -> list[Block]:
    """Every shell and Python block of a page, hidden set-up blocks included, in page order."""
    found: list[Block] = []
    lines = (ROOT / page).read_text().splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith(HIDDEN_START):
            start = index
            index += 1
            body: list[str] = []
            while index < len(lines) and "-->" not in lines[index]:
                body.append(lines[index])
                index += 1
            index += 1
            found.append(Block(page, start + 1, "sh", "\n".join(body), hidden=True))
            continue
        match = FENCE.match(line)
        if not match:
            index += 1
            continue
        language, rest = match.group(1).lower(), match.group(2)
        start = index
        index += 1
        body = []
        while index < len(lines) and not lines[index].startswith("```"):
            body.append(lines[index])
            index += 1
        index += 1
        if language not in SHELL | PYTHON:
            continue
        previous = next((lines[i] for i in range(start - 1, -1, -1) if lines[i].strip()), "")
        invisible = "placeholder" in rest or previous.startswith(INVISIBLE_SKIP_MARKERS)
        first = next((b.strip() for b in body if b.strip()), "")
        visible = bool(SKIP_COMMENT.match(first))
        found.append(
            Block(
                page,
                start + 1,
                "sh" if language in SHELL else "python",
                "\n".join(body),
                skipped=invisible or visible,
                visibly_marked=visible or not invisible,
            )
        )
    return found


def blocks(page: str) -> list[Block]:
    """The blocks of a page that run, in order."""
    return [block for block in all_blocks(page) if not block.skipped]


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


def python_shown_output(text: str) -> list[str]:
    """The comment lines that end a Python block directly below its last statement."""
    lines = text.rstrip().splitlines()
    shown: list[str] = []
    for line in reversed(lines):
        stripped = line.strip()
        if not stripped.startswith("#"):
            return list(reversed(shown)) if stripped else []
        shown.append(stripped[1:].strip())
    return []  # a block of comments only shows nothing


def expected_pattern(shown: list[str]) -> re.Pattern[str]:
    """What a command must print, whole: whitespace ignored, `…` (or `...`) for anything."""
    text = re.sub(r"\s+", "", "".join(shown))
    parts = [re.escape(part) for part in re.split(r"…|\.\.\.", text)]
    return re.compile(".*?".join(parts), re.DOTALL)


def prints_as_shown(shown: list[str], printed: str) -> bool:
    return expected_pattern(shown).fullmatch(re.sub(r"\s+", "", printed)) is not None


def output_listing(page: str, program: str) -> list[str]:
    """The lines of the listing a page shows as `program`'s output: the fenced block after an
    `<!-- output of PROGRAM` line. The test that runs the program compares them
    (`listing_lines_not_printed`), since a listing is not a command to run here."""
    lines = (ROOT / page).read_text().splitlines()
    marker = f"<!-- output of {program}"
    start = next(i for i, line in enumerate(lines) if line.startswith(marker))
    fence = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("```"))
    end = next(i for i in range(fence + 1, len(lines)) if lines[i].startswith("```"))
    return [line.strip() for line in lines[fence + 1 : end] if line.strip()]


_HEX_RUN = re.compile(r"\b(?=[0-9a-f]*\d)[0-9a-f]{8,}\b")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def _figures_as_placeholders(text: str) -> str:
    """Hashes and numbers as placeholders: a listing's figures are one run's."""
    return _NUMBER.sub("0", _HEX_RUN.sub("HEX", text))


def listing_lines_not_printed(listing: list[str], printed: str) -> list[str]:
    """The lines of a listing that the program's output lacks, in order: each must be a whole
    line of the output (whitespace ignored, `…` for anything, figures and hashes free)."""
    output = [_figures_as_placeholders(line) for line in printed.splitlines()]
    missing: list[str] = []
    position = 0
    for line in listing:
        pattern = expected_pattern([_figures_as_placeholders(line)])
        found = next(
            (
                index
                for index in range(position, len(output))
                if pattern.fullmatch(re.sub(r"\s+", "", output[index]))
            ),
            None,
        )
        if found is None:
            missing.append(line)
        else:
            position = found + 1
    return missing


@dataclass
class Check:
    block: Block
    command: str
    shown: list[str]


def script(page_blocks: list[Block], ports: dict[str, str]) -> tuple[str, list[Check]]:
    """One bash script running every block; each command with shown output is framed by
    markers so its output can be told apart."""
    out = ["set -euo pipefail"]
    checks: list[Check] = []

    def framed(command: str, shown: list[str], block: Block) -> None:
        mark = len(checks)
        checks.append(Check(block, command, shown))
        out.append(f"echo '@@start {mark}'")
        out.append(f"{{ {command}\n}} 2>&1")
        out.append(f"echo '@@end {mark}'")

    for block in page_blocks:
        out.append(f"echo '@@block {block.page}:{block.line}' >&2")
        if block.language == "python":
            command = f"python - <<'__DOC_PYTHON__'\n{block.text}\n__DOC_PYTHON__"
            shown = python_shown_output(block.text)
            if shown:
                framed(command, shown, block)
            else:
                out.append(command)
            continue
        for command, shown in logical_lines(block.text):
            if shown:
                framed(command, shown, block)
            else:
                out.append(command)
    text = "\n".join(out) + "\n"
    for doc_port, port in ports.items():
        text = re.sub(rf"\b{doc_port}\b", port, text)
    return text, checks


def run_page(page: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], list[Check]]:
    page_blocks = blocks(page)
    assert page_blocks, f"{page} has no runnable example"
    ports = {doc_port: str(free_port()) for doc_port in DOC_PORTS}
    text, checks = script(page_blocks, ports)
    workdir = tmp_path / "page"
    workdir.mkdir()
    # curl prints a progress meter when its output is not a terminal; a reader sees none
    (tmp_path / ".curlrc").write_text("--no-progress-meter\n")
    (tmp_path / "doc-example.sh").write_text(text)
    env = {
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        "DOCS_SETUP": str(DOCS_SETUP),
        "REPO": str(ROOT),
    }
    process = subprocess.Popen(
        ["bash", str(tmp_path / "doc-example.sh")],
        cwd=workdir,
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
    for doc_port, port in ports.items():
        stdout = re.sub(rf"\b{port}\b", doc_port, stdout)
    stdout = stdout.replace(f"{workdir}/", "").replace(str(workdir), ".")
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    return result, checks


@pytest.mark.e2e
@pytest.mark.parametrize("page", EXECUTED_PAGES)
def test_page_examples_run_and_print_what_they_show(page: str, tmp_path: Path) -> None:
    result, checks = run_page(page, tmp_path)
    last_block = [line for line in result.stderr.splitlines() if line.startswith("@@block")][-1:]
    assert result.returncode == 0, (
        f"{page}: an example failed (exit {result.returncode}) in {last_block}\n"
        f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
    )
    mismatches = []
    for mark, check in enumerate(checks):
        printed = result.stdout.split(f"@@start {mark}\n", 1)[1].split(f"@@end {mark}\n", 1)[0]
        if not prints_as_shown(check.shown, printed):
            mismatches.append(
                f"{check.block.page}:{check.block.line}: `{check.command.strip()[:300]}` "
                f"printed\n{printed}\nbut the page shows\n" + "\n".join(check.shown)
            )
    assert not mismatches, "\n\n".join(mismatches)


@pytest.mark.parametrize("page", ALL_PAGES)
def test_skipped_examples_say_so_visibly(page: str) -> None:
    hidden_markers = [block.line for block in all_blocks(page) if not block.visibly_marked]
    assert not hidden_markers, (
        f"{page}: the blocks at lines {hidden_markers} are skipped by an invisible marker; "
        "start each with a visible `# placeholder: …` or `# not run here: REASON` line"
    )


@pytest.mark.parametrize(
    "page", [page for page in ALL_PAGES if page not in EXECUTED_PAGES and page != "README.md"]
)
def test_a_page_not_executed_has_nothing_to_run(page: str) -> None:
    runnable = [block.line for block in blocks(page)]
    assert not runnable, (
        f"{page}: the blocks at lines {runnable} would run: list the page in EXECUTED_PAGES"
    )


def test_output_comments_are_told_from_prose() -> None:
    pairs = logical_lines(
        "# prose\nsealserve verify x \\\n    y\n# OK: model …\n\n# more prose\necho hi  # note\n"
    )
    assert pairs == [("sealserve verify x  y", ["OK: model …"]), ("echo hi  # note", [])]
    assert prints_as_shown(["OK: model …, 4 files"], "OK: model 6f1c, 4 files\n")
    assert not prints_as_shown(["OK: model …, 4 files"], "noise\nOK: model 6f1c, 4 files\n")
    assert python_shown_output("x = 1\n# prose\nprint(x)\n# 1\n") == ["1"]
    assert python_shown_output("# prose\nprint(1)\n\n# after a blank line\n") == []


def test_listings_are_compared_line_by_line_with_figures_free() -> None:
    printed = (
        "noise\n  serving m: gRPC on 127.0.0.1:35481\n  mr_enclave 7dd362e06b918f60… x\n"
        "Done in 9 s\n"
    )
    listing = [
        "serving m: gRPC on 127.0.0.1:8500",
        "mr_enclave a546775a24cf7832… x",
        "Done in 70 s",
    ]
    assert listing_lines_not_printed(listing, printed) == []
    assert listing_lines_not_printed(["Done in 70 s", "serving m: …"], printed) == ["serving m: …"]
    assert listing_lines_not_printed(["serving n: …"], printed) == ["serving n: …"]


def test_hidden_and_skipped_blocks_are_recognised(tmp_path: Path, monkeypatch) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "<!-- test-only: what the quickstart made\nsealserve keygen -w k\n-->\n"
        "```sh\n# placeholder: your own model\nsealserve encrypt -i mine\n```\n"
        "```bash\necho run\n```\n"
        "<!-- not run: legacy -->\n```sh\necho hidden marker\n```\n"
        "```toml\nnot = 'run'\n```\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    found = all_blocks("page.md")
    assert [(b.hidden, b.skipped, b.visibly_marked) for b in found] == [
        (True, False, True),
        (False, True, True),
        (False, False, True),
        (False, True, False),
    ]
    assert [b.text for b in blocks("page.md")] == ["sealserve keygen -w k", "echo run"]


def test_the_readme_quickstart_is_the_executed_one() -> None:
    """The README's quickstart is docs/quickstart.md's, block for block, so running the page
    runs the README (and README.md has no other runnable block)."""
    readme = [(b.language, b.text) for b in blocks("README.md") if not b.hidden]
    guide = [(b.language, b.text) for b in blocks("docs/quickstart.md") if not b.hidden]
    assert readme == guide
