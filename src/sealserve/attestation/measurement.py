"""The simulated TEE's measurement (its MRENCLAVE): a digest of the code that runs and of how
it was launched.

A real SGX MRENCLAVE measures the enclave's initial pages; under Gramine that covers the
manifest and, through `sgx.trusted_files`, every file the application may load. The simulated
TEE approximates that with:

    installed_code_digest = SHA-256(canonical JSON {"format": "sealserve-code-v1",
                                     "files": [[posix relative path, SHA-256 hex], ...]})

over every regular file of the installed `sealserve` package (sorted by path; `__pycache__`
directories and `.pyc` files are skipped: they are derived, and differ between runs), and

    measurement(launch_config) = SHA-256(canonical JSON {"format": "sealserve-sim-measurement-v2",
                                 "code": installed_code_digest hex,
                                 "python": python_environment_digest hex,
                                 "launch": launch_config})

where `launch_config` holds the serve settings that matter for security (model paths, TLS and
key-provider settings, ...), chosen by the caller, and the Python environment is what a real
enclave measures for a Python program besides the program (Gramine's manifest: the
interpreter as a trusted file, `loader.env`, the trusted import path): the interpreter binary
(and its shared libpython), `sys.path` in order, the content of every `.pth` file and of
`sitecustomize` / `usercustomize` where Python would find them, the interpreter's
command-line flags, every `PYTHON*` environment variable that can change which code runs
(`HARMLESS_PYTHON_VARIABLES` are the exceptions: buffering, encodings, bytecode writing), and
the dynamic loader's `LD_PRELOAD`, `LD_AUDIT` and `LD_LIBRARY_PATH`.
Canonical JSON = sorted keys, no whitespace, UTF-8 (RFC 8785-compatible for the strings,
integers and booleans such configs hold; floats are refused because their text form is not
canonical across implementations). Changing one byte of one file, of the interpreter, of a
start-up file, or one launch setting changes the measurement.

`unmeasured_python_inputs()` names what the measurement cannot vouch for: such variables
(`LD_LIBRARY_PATH` aside), and `sys.path` entries outside the interpreter's installation and
sealserve's own (a `PYTHONPATH` directory, the current directory, a user site directory). An
attested server refuses to start while there is any (`cli.py`): their files would run
inside the "measured" process unmeasured. The content of the standard library and of
installed third-party packages is not hashed (TensorFlow alone is gigabytes; Gramine covers
those as trusted files).

This is a *simulation*: the process measures itself, so code that runs before the
measurement (a `.pth` file, `sitecustomize`) could lie about it; measuring those files makes
such code visible to the KBS policy, and the refusal above stops the plain cases. It gives the
KBS's policy something real to pin in tests and demos, not protection against a host.

Pure functions over the file system and the interpreter's state; thread-safe.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.machinery
import json
import os
import sys
import sysconfig
from pathlib import Path
from typing import Any

from sealserve.errors import InvalidArgument, NotFound

CODE_FORMAT = "sealserve-code-v1"
MEASUREMENT_FORMAT = "sealserve-sim-measurement-v2"
PYTHON_FORMAT = "sealserve-python-v1"
#: `PYTHON*` variables that change neither which code runs nor what it computes.
HARMLESS_PYTHON_VARIABLES = frozenset(
    {
        "PYTHONUNBUFFERED",
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONHASHSEED",
        "PYTHONIOENCODING",
        "PYTHONUTF8",
        "PYTHONCOERCECLOCALE",
        "PYTHONNOUSERSITE",
        "PYTHONSAFEPATH",
        "PYTHONFAULTHANDLER",
    }
)
#: the interpreter options that change what runs at start-up (`python -I`, `-S`, `-s`, `-P`,
#: `-O`, `-E`)
_MEASURED_FLAGS = (
    "isolated",
    "ignore_environment",
    "no_site",
    "no_user_site",
    "safe_path",
    "optimize",
    "dev_mode",
)
_STARTUP_MODULES = ("sitecustomize", "usercustomize")
#: the dynamic loader's ways to run a library of the host's in the process before Python
#: starts (ld.so(8)); never needed by the server, refused when attested
_LOADER_INJECTING_VARIABLES = frozenset({"LD_PRELOAD", "LD_AUDIT"})
#: measured by value only: Gramine's manifest sets LD_LIBRARY_PATH itself
_LOADER_PATH_VARIABLES = ("LD_LIBRARY_PATH",)
_SKIPPED_DIRS = {"__pycache__"}
_SKIPPED_SUFFIXES = (".pyc", ".pyo")


def _package_root() -> Path:
    import sealserve

    return Path(sealserve.__file__).resolve().parent


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no insignificant whitespace, UTF-8; only dicts with string keys, lists,
    strings, integers, booleans and null."""
    _check_canonical(value, "launch_config")
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _check_canonical(value: Any, where: str) -> None:
    if value is None or isinstance(value, bool | int | str):
        return
    if isinstance(value, float):
        raise InvalidArgument(f"{where} holds a float; use a string or an integer")
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_canonical(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidArgument(f"{where} has a non-string key {key!r}")
            _check_canonical(item, f"{where}.{key}")
        return
    raise InvalidArgument(f"{where} holds a {type(value).__name__}, which is not JSON")


def code_manifest(root: str | os.PathLike[str] | None = None) -> list[tuple[str, str]]:
    """(posix relative path, SHA-256 hex) of every file under `root`, sorted by path.
    `root` defaults to the installed `sealserve` package."""
    base = Path(root) if root is not None else _package_root()
    if not base.is_dir():
        raise NotFound(f"code directory {base} not found")
    entries: list[tuple[str, str]] = []
    for directory, subdirs, files in os.walk(base):
        subdirs[:] = sorted(d for d in subdirs if d not in _SKIPPED_DIRS)
        for name in files:
            if name.endswith(_SKIPPED_SUFFIXES):
                continue
            path = Path(directory) / name
            if not path.is_file():
                continue
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
            entries.append((path.relative_to(base).as_posix(), digest.hexdigest()))
    entries.sort()
    return entries


def installed_code_digest(root: str | os.PathLike[str] | None = None) -> bytes:
    """SHA-256 over the canonical description of the code under `root` (32 bytes)."""
    files = [list(entry) for entry in code_manifest(root)]
    description = {"format": CODE_FORMAT, "files": files}
    return hashlib.sha256(canonical_json(description)).digest()


def measurement(
    launch_config: dict[str, Any],
    *,
    code_root: str | os.PathLike[str] | None = None,
    python: dict[str, Any] | None = None,
) -> bytes:
    """The simulated MRENCLAVE (32 bytes) of this code launched with `launch_config` in the
    Python environment `python` (default: this process's, `python_environment()`)."""
    if not isinstance(launch_config, dict):
        raise InvalidArgument("launch_config must be a dict")
    _check_canonical(launch_config, "launch_config")
    environment = python_environment() if python is None else python
    description = {
        "format": MEASUREMENT_FORMAT,
        "code": installed_code_digest(code_root).hex(),
        "python": hashlib.sha256(canonical_json(environment)).hexdigest(),
        "launch": launch_config,
    }
    return hashlib.sha256(canonical_json(description)).digest()


# -- the Python environment -------------------------------------------------------------


def _file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _interpreter_files() -> list[str]:
    """The interpreter binary, and libpython when the binary links it as a shared library."""
    files = [os.path.realpath(sys.executable)]
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):
        library = os.path.join(
            sysconfig.get_config_var("LIBDIR") or "", sysconfig.get_config_var("LDLIBRARY") or ""
        )
        if os.path.isfile(library):
            files.append(os.path.realpath(library))
    return files


def _startup_files(path_entries: list[str]) -> list[tuple[str, str]]:
    """`.pth` files of every directory on the path and the files of `sitecustomize` /
    `usercustomize` where Python found (or would find) them: code that runs at start-up."""
    found: set[str] = set()
    for entry in path_entries:
        directory = entry or os.getcwd()
        with contextlib.suppress(OSError):
            for name in os.listdir(directory):
                if name.endswith(".pth"):
                    found.add(os.path.realpath(os.path.join(directory, name)))
    for module in _STARTUP_MODULES:
        origin = _module_origin(module)
        if origin:
            found.add(os.path.realpath(origin))
    entries = []
    for path in sorted(found):
        with contextlib.suppress(OSError):  # vanished or unreadable: cannot run either
            entries.append((path, _file_sha256(path)))
    return entries


def _module_origin(name: str) -> str | None:
    loaded = sys.modules.get(name)
    if loaded is not None:
        return getattr(loaded, "__file__", None)
    try:
        spec = importlib.machinery.PathFinder.find_spec(name)  # finds, does not run it
    except (ImportError, ValueError):
        return None
    return spec.origin if spec is not None and spec.has_location else None


def _code_changing_variables() -> dict[str, str]:
    """Variables that put other code into the process: refused when attested."""
    return {
        name: value
        for name, value in sorted(os.environ.items())
        if (name.startswith("PYTHON") and name not in HARMLESS_PYTHON_VARIABLES)
        or name in _LOADER_INJECTING_VARIABLES
    }


def _measured_variables() -> dict[str, str]:
    return {
        **_code_changing_variables(),
        **{name: os.environ[name] for name in _LOADER_PATH_VARIABLES if name in os.environ},
    }


def python_environment() -> dict[str, Any]:
    """What this process's interpreter runs besides sealserve: the description hashed into
    the measurement (see the module docstring)."""
    path = [str(entry) for entry in sys.path]
    return {
        "format": PYTHON_FORMAT,
        "interpreter": [[p, _file_sha256(p)] for p in _interpreter_files()],
        "version": sys.version,
        "flags": {name: int(getattr(sys.flags, name, 0)) for name in _MEASURED_FLAGS},
        "path": path,
        "startup_files": [list(entry) for entry in _startup_files(path)],
        "environment": _measured_variables(),
    }


def _installation_roots() -> list[str]:
    """Directories whose code belongs to the measured installation: the interpreter's
    prefixes (standard library, the environment's site-packages) and sealserve's own."""
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    roots.add(str(_package_root().parent))
    return sorted(os.path.realpath(root) for root in roots if root)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def unmeasured_python_inputs() -> list[str]:
    """Why this process may run code the measurement does not vouch for (empty: nothing).
    Each reason is one line naming the variable or directory."""
    reasons = [f"environment variable {name} is set" for name in _code_changing_variables()]
    roots = _installation_roots()
    for entry in sys.path:
        if entry == "":
            reasons.append("the current directory is on sys.path (python -c / an interactive run)")
            continue
        resolved = os.path.realpath(entry)
        if not any(_inside(resolved, root) for root in roots):
            reasons.append(f"sys.path entry {entry} is outside the measured installation")
    return reasons
