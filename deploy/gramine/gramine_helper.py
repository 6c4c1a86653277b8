"""Helpers of deploy/gramine/Makefile, run with the Python environment that will run in the enclave.

`defines`: print the `gramine-manifest -D` options that describe this interpreter (where its
binary, libpython, standard library and site-packages are, and where sealserve is installed), one
option per line (paths with white space or quotes are refused: they would not survive the
Makefile nor TOML unescaped). Run it with the interpreter the enclave will run: its paths are
what `sgx.trusted_files` measures.

`policy SIGSTRUCT_JSON`: turn `gramine-sgx-sigstruct-view --output-format json sealserve.sig` into
a sealserve KBS policy (TOML) that pins this enclave: MRENCLAVE, MRSIGNER, ISV product id and
minimum SVN, SGX only, TCB status UpToDate only. Refuses a debug enclave. When sealserve is
importable the policy is checked with sealserve's own parser before it is printed.

Standard library only (besides the optional check), so it also runs before sealserve is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import sysconfig
from pathlib import Path

_HEX32 = re.compile(r"^[0-9a-f]{64}$")
_UNSAFE = re.compile(r"[\s\"'\\]")


def python_defines() -> dict[str, str]:
    """The template variables describing the running interpreter and its sealserve install."""
    config = sysconfig.get_config_var
    libpython = ""
    if config("Py_ENABLE_SHARED"):
        libpython = os.path.join(config("LIBDIR"), config("INSTSONAME"))
    in_venv = sys.prefix != sys.base_prefix
    try:
        import sealserve
    except ImportError:
        raise SystemExit(
            f"sealserve is not installed for {sys.executable}: pip install the project into "
            "the environment the enclave will run (PYTHON=.../bin/python)"
        ) from None
    package = os.path.dirname(os.path.realpath(sealserve.__file__))
    script = os.path.abspath(os.path.join(sysconfig.get_path("scripts"), "sealserve"))
    if not os.path.isfile(script):
        raise SystemExit(f"{script} not found: is sealserve installed in this environment?")
    return {
        "python_home": os.path.realpath(sys.base_prefix),
        "python_executable": os.path.realpath(sys.executable),
        "python_argv0": os.path.abspath(sys.executable),
        "python_libpython": os.path.realpath(libpython) if libpython else "",
        "python_stdlib": os.path.realpath(sysconfig.get_path("stdlib")),
        "python_dynload": os.path.realpath(config("DESTSHARED") or sysconfig.get_path("stdlib")),
        "venv": os.path.abspath(sys.prefix),
        "pyvenv_cfg": os.path.join(os.path.abspath(sys.prefix), "pyvenv.cfg") if in_venv else "",
        "site_packages": os.path.abspath(sysconfig.get_path("purelib")),
        "sealserve_script": script,
        "sealserve_package": package,
    }


def policy_toml(sigstruct: dict[str, object]) -> str:
    """A KBS policy accepting exactly the enclave of this SIGSTRUCT (as sigstruct-view shows it)."""
    if sigstruct.get("debug_enclave"):
        raise SystemExit(
            "this SIGSTRUCT is of a debug enclave (sgx.debug = true): its memory is readable by "
            "the host, and the KBS refuses debug enclaves; sign a production enclave"
        )
    values = {}
    for name in ("mr_enclave", "mr_signer"):
        value = str(sigstruct.get(name, "")).lower()
        if not _HEX32.match(value):
            raise SystemExit(f"{name} in the SIGSTRUCT is not 32 bytes of hex: {value!r}")
        values[name] = value
    prod_id, svn = sigstruct.get("isv_prod_id"), sigstruct.get("isv_svn")
    if not isinstance(prod_id, int) or not isinstance(svn, int):
        raise SystemExit("isv_prod_id and isv_svn must be integers in the SIGSTRUCT")
    return (
        "# KBS policy for sealserve in Gramine SGX (deploy/gramine: make policy.toml)\n"
        "version = 1\n"
        'tee = ["sgx"]\n'
        'accepted_tcb_statuses = ["UpToDate"]\n'
        "\n"
        "[[sgx]]\n"
        f'mr_enclave = ["{values["mr_enclave"]}"]\n'
        f'mr_signer = ["{values["mr_signer"]}"]\n'
        f"isv_prod_id = [{prod_id}]\n"
        f"min_isv_svn = {svn}\n"
    )


def _check_with_sealserve(text: str) -> None:
    try:
        from sealserve.attestation import Policy
    except ImportError:
        return
    Policy.from_toml(text, source="generated policy")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("defines", help="gramine-manifest -D options for this interpreter")
    policy = sub.add_parser("policy", help="KBS policy TOML from sigstruct-view JSON")
    policy.add_argument("sigstruct_json", help="output of gramine-sgx-sigstruct-view -o json")
    args = parser.parse_args(argv)
    if args.command == "defines":
        for key, value in python_defines().items():
            if _UNSAFE.search(value):
                raise SystemExit(f"{key} {value!r}: white space and quotes are not supported")
            print(f"-D{key}={value}")
    else:
        sigstruct = json.loads(Path(args.sigstruct_json).read_text())
        text = policy_toml(sigstruct)
        _check_with_sealserve(text)
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
