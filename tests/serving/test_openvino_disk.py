"""No plaintext model, IR or compiled blob reaches a file system while an encrypted model
is converted and run by OpenVINO, and OpenVINO's telemetry neither writes nor sends.

The load runs in a process of its own, with an empty home, temporary and working directory,
watched twice: every file it or its conversion process creates or opens for writing, from
native code too, through `strace -f` (where installed), and from Python through an audit
hook (the loading process). Its only writes are
TensorFlow's own start-up ones, also made when TensorFlow serves the model."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from sealserve.model_tree import encrypt_tree
from tests.serving.conftest import SECRET_KEY

LOAD = r"""
import json, sys
from pathlib import Path
import numpy as np

written = []
def watch(event, args):
    # an int is a descriptor opened before (its os.open was seen): the pipes to the
    # conversion process
    if (event == "open" and isinstance(args[1], str) and any(c in args[1] for c in "wax+")
            and not isinstance(args[0], int)):
        written.append(str(args[0]))
    elif event in ("os.mkdir", "os.rename", "os.link", "shutil.copyfile", "tempfile.mkstemp",
                   "tempfile.mkdtemp"):
        written.append(str(args[0]))
sys.addaudithook(watch)

from sealserve.serving.keys import StaticKeyProvider
from sealserve.serving.loader import LoadOptions, VersionLoader
from sealserve.serving.runtimes import parse_runtime

root, key = Path(sys.argv[1]), bytes.fromhex(sys.argv[2])
for runtime in ("openvino", "openvino:bf16"):
    servable = VersionLoader(
        "m", 1, root, StaticKeyProvider({"m": key}), LoadOptions(), runtime=parse_runtime(runtime)
    ).load()
    assert servable.runtime_labels == {"serving_default": "OpenVINO"}, servable.runtime_labels
    servable.run("serving_default", {"image": np.zeros((3, 8, 8, 1), np.float32)})
print(json.dumps([w for w in written if w != "/dev/null"]))
"""
WRITING = re.compile(r"O_WRONLY|O_RDWR|O_CREAT|O_TRUNC|O_APPEND")
PATH_CALLS = re.compile(
    r"^\d+\s+(openat|open|creat|mkdir|mkdirat|rename|renameat2?|link|linkat|symlink|truncate)"
    r"\((?:AT_FDCWD, )?\"([^\"]*)\"(.*)$"
)


def test_an_encrypted_model_on_openvino_leaves_nothing_on_disk(tmp_path, digits_model):
    encrypt_tree(digits_model, str(tmp_path / "model"), SECRET_KEY)
    home, temporary, work = tmp_path / "home", tmp_path / "tmp", tmp_path / "work"
    for directory in (home, temporary, work):
        directory.mkdir()
    trace = tmp_path / "trace.txt"
    argv = [sys.executable, "-c", LOAD, str(tmp_path / "model"), SECRET_KEY.hex()]
    strace = shutil.which("strace")
    if strace:
        argv = [strace, "-f", "-qq", "-e", "trace=%file", "-o", str(trace), *argv]
    env = dict(os.environ, HOME=str(home), TMPDIR=str(temporary), PYTHONDONTWRITEBYTECODE="1")
    done = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    python_writes = json.loads(done.stdout.strip().splitlines()[-1])
    native_writes = _written_paths(trace) if strace else []
    allowed = _tensorflow_start_up_writes(home, temporary)
    unexpected = [p for p in python_writes + native_writes if not allowed(p)]
    assert unexpected == []
    # what is left: TensorFlow's (Keras's) settings file, matplotlib's caches, nothing else
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert [
        p
        for p in left
        if not p.startswith(
            ("model/", "trace.txt", "home/.config/matplotlib", "home/.cache/matplotlib")
        )
    ] == ["home/.keras/keras.json"]


def _written_paths(trace: Path) -> list[str]:
    """Paths the traced process created, renamed, linked or opened for writing."""
    paths = []
    for line in trace.read_text(errors="replace").splitlines():
        call = PATH_CALLS.match(line)
        if call is None or "= -1" in call.group(3):
            continue
        name, path, rest = call.groups()
        if name in ("openat", "open") and not WRITING.search(rest):
            continue
        paths.append(path)
    return paths


def _tensorflow_start_up_writes(home: Path, temporary: Path):  # noqa: ANN202
    """What TensorFlow's import writes whichever runtime serves: Keras's settings file,
    matplotlib's configuration and font cache where matplotlib is installed (TensorFlow
    imports it if present; the test extra has it for `client --plot`), Python's probe of the
    temporary directory (`tempfile.gettempdir`, a file created and removed at once), joblib's
    probe for POSIX semaphores, thread names, /dev/null."""
    keras = {str(home / ".keras"), str(home / ".keras" / "keras.json")}
    keras |= {str(home / ".config"), str(home / ".cache")}  # matplotlib's parents
    matplotlib = (str(home / ".config" / "matplotlib"), str(home / ".cache" / "matplotlib"))
    probe = re.compile(re.escape(str(temporary)) + r"/[a-z0-9_]{8}$")
    fixed = re.compile(r"^(/dev/null|/dev/shm/sem\.[A-Za-z0-9_.-]+|/proc/self/task/\d+/comm)$")

    def allowed(path: str) -> bool:
        if path in keras or fixed.match(path) or path.startswith(matplotlib):
            return True
        return bool(probe.match(path)) and not Path(path).exists()

    return allowed
