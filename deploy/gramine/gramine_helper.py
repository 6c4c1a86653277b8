"""Helpers of deploy/gramine/Makefile, run with the Python environment that will run in the enclave.

`defines`: print the `gramine-manifest -D` options that describe this interpreter (where its
binary, libpython, standard library and site-packages are, and where sealserve is installed), one
option per line (paths with white space or quotes are refused: they would not survive the
Makefile nor TOML unescaped). Run it with the interpreter the enclave will run: its paths are
what `sgx.trusted_files` measures.

Paths are given as the enclave's Python will open them, not resolved through symbolic links:
Gramine maps an in-enclave path through `fs.mounts` to a host URI and checks that URI, only
normalised (`.`, `..`, `//`), against `sgx.trusted_files` (Gramine 1.8 pal_files.c); the host
follows symbolic links when it opens the file. So a `.venv` that is a symbolic link must be
listed by the path Python uses (`.venv/lib/...`), not by where the link points.

`policy SIGSTRUCT_JSON [options]`: turn `gramine-sgx-sigstruct-view --output-format json
sealserve.sig` into a sealserve KBS policy (TOML) that pins this enclave: MRENCLAVE, MRSIGNER,
ISV product id and minimum SVN, SGX only. The platform's TCB is the owner's decision: TCB status
UpToDate only unless `--accept-tcb-status` lists others, plus `--deny-advisory`,
`--accept-advisory`, `--tcb-grace-period-seconds`, `--max-collateral-age-seconds` (each maps
onto one field of the KBS policy: `POLICY_FIELDS`; docs/deployment.md says what each costs).
Refuses a debug enclave. When sealserve is importable the policy is checked with sealserve's
own parser before it is printed, and an option whose field this sealserve's policy does not
have is refused rather than silently dropped.

`compare SIGSTRUCT_JSON (--mrenclave HEX | --policy FILE)`: whether an enclave the owner rebuilt
(`make reproduce-mrenclave`) has the MRENCLAVE they were given or pinned; exit 1 if not.

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
    # where `import sealserve` finds it (an editable install points outside the environment)
    package = os.path.dirname(os.path.abspath(sealserve.__file__))
    script = os.path.abspath(os.path.join(sysconfig.get_path("scripts"), "sealserve"))
    if not os.path.isfile(script):
        raise SystemExit(f"{script} not found: is sealserve installed in this environment?")
    stdlib = os.path.normpath(sysconfig.get_path("stdlib"))
    # the lib-dynload entry of sys.path is the one Python opens extension modules from
    dynload = next((p for p in sys.path if p.endswith("lib-dynload")), stdlib)
    return {
        "python_home": os.path.normpath(sys.base_prefix),
        # the binary Gramine starts (libos.entrypoint) and the library it links: Gramine opens
        # these itself, by these paths, so they are the files themselves, not symbolic links
        "python_executable": os.path.realpath(sys.executable),
        "python_argv0": os.path.abspath(sys.executable),
        "python_libpython": os.path.realpath(libpython) if libpython else "",
        "python_stdlib": stdlib,
        "python_dynload": os.path.normpath(dynload),
        "venv": os.path.abspath(sys.prefix),
        "pyvenv_cfg": os.path.join(os.path.abspath(sys.prefix), "pyvenv.cfg") if in_venv else "",
        "site_packages": os.path.abspath(sysconfig.get_path("purelib")),
        "sealserve_script": script,
        "sealserve_package": package,
    }


#: option of `policy` -> the KBS policy field it sets (attestation/policy.py). One table, so that
#: the owner's options follow the KBS's fields as they are added.
POLICY_FIELDS = {
    "accept_tcb_status": "accepted_tcb_statuses",
    "deny_advisory": "denied_advisories",
    "accept_advisory": "accepted_advisories",
    "tcb_grace_period_seconds": "tcb_grace_period_seconds",
    "max_collateral_age_seconds": "max_collateral_age_seconds",
}
_ADVISORY = re.compile(r"^INTEL-SA-\d{5}$")


def platform_settings(
    *,
    accept_tcb_status: list[str] | None = None,
    deny_advisory: list[str] | None = None,
    accept_advisory: list[str] | None = None,
    tcb_grace_period_seconds: int | None = None,
    max_collateral_age_seconds: int | None = None,
) -> dict[str, object]:
    """The policy fields for the owner's TCB choices (only those they made, plus the status
    default `UpToDate`), keyed by the KBS policy's field names."""
    given: dict[str, object] = {
        "accept_tcb_status": accept_tcb_status or ["UpToDate"],
        "deny_advisory": deny_advisory,
        "accept_advisory": accept_advisory,
        "tcb_grace_period_seconds": tcb_grace_period_seconds,
        "max_collateral_age_seconds": max_collateral_age_seconds,
    }
    out: dict[str, object] = {}
    for option, value in given.items():
        if value is None or value == []:
            continue
        if isinstance(value, list):
            value = list(dict.fromkeys(value))  # keep the order, drop repeats
            if option.endswith("advisory"):
                value = [v.strip().upper() for v in value]
                bad = [v for v in value if not _ADVISORY.match(v)]
                if bad:
                    raise SystemExit(f"{bad[0]!r} is not an advisory id like INTEL-SA-00615")
        elif isinstance(value, int) and value < 0:
            raise SystemExit(f"--{option.replace('_', '-')} must not be negative")
        out[POLICY_FIELDS[option]] = value
    if "Revoked" in out["accepted_tcb_statuses"]:  # type: ignore[operator]
        raise SystemExit("TCB status Revoked can never be accepted")
    return out


def _toml_value(value: object) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(json.dumps(v) for v in value) + "]"
    return json.dumps(value)


def policy_toml(
    sigstruct: dict[str, object], *, mr_signer: str | None = None, **platform: object
) -> str:
    """A KBS policy accepting exactly the enclave of this SIGSTRUCT (as sigstruct-view shows it),
    on platforms whose TCB the owner's options accept (`platform_settings`). `mr_signer`
    replaces the SIGSTRUCT's (hex, or "any"): an enclave the owner rebuilt to check MRENCLAVE
    was signed with a throw-away key, not the builder's."""
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
    signer = f'["{values["mr_signer"]}"]'
    if mr_signer is not None:
        mr_signer = mr_signer.strip().lower()
        if mr_signer != "any" and not _HEX32.match(mr_signer):
            raise SystemExit(f'--mr-signer {mr_signer!r} is neither 32 bytes of hex nor "any"')
        signer = '"any"' if mr_signer == "any" else f'["{mr_signer}"]'
    prod_id, svn = sigstruct.get("isv_prod_id"), sigstruct.get("isv_svn")
    if not isinstance(prod_id, int) or not isinstance(svn, int):
        raise SystemExit("isv_prod_id and isv_svn must be integers in the SIGSTRUCT")
    settings = platform_settings(**platform)  # type: ignore[arg-type]
    lines = [
        "# KBS policy for sealserve in Gramine SGX (deploy/gramine: make policy.toml)",
        "version = 1",
        'tee = ["sgx"]',
        *(f"{field} = {_toml_value(value)}" for field, value in settings.items()),
        "",
        "[[sgx]]",
        f'mr_enclave = ["{values["mr_enclave"]}"]',
        f"mr_signer = {signer}",
        f"isv_prod_id = [{prod_id}]",
        f"min_isv_svn = {svn}",
    ]
    return "\n".join(lines) + "\n"


def compare(sigstruct: dict[str, object], expected: list[str]) -> tuple[bool, str]:
    """(same, message): whether the rebuilt enclave's MRENCLAVE is one of `expected`."""
    rebuilt = str(sigstruct.get("mr_enclave", "")).lower()
    if not _HEX32.match(rebuilt):
        raise SystemExit(f"mr_enclave in the SIGSTRUCT is not 32 bytes of hex: {rebuilt!r}")
    wanted = [e.strip().lower() for e in expected]
    if rebuilt in wanted:
        return True, f"reproduced: MRENCLAVE {rebuilt}"
    return False, (
        f"NOT reproduced: the rebuilt enclave has MRENCLAVE {rebuilt}, expected "
        f"{' or '.join(wanted)}; do not release keys to the builder's enclave"
    )


def _pinned_mrenclaves(policy_path: str) -> list[str]:
    import tomllib

    data = tomllib.loads(Path(policy_path).read_text())
    pinned = [v for entry in data.get("sgx", []) for v in entry.get("mr_enclave", [])]
    if not pinned or not isinstance(pinned, list):
        raise SystemExit(f"{policy_path} pins no mr_enclave in its [[sgx]] entries")
    return [str(v) for v in pinned]


def _check_with_sealserve(text: str) -> None:
    try:
        from sealserve.attestation import Policy
        from sealserve.errors import SealserveError
    except ImportError:
        return
    import dataclasses
    import tomllib

    known = {f.name for f in dataclasses.fields(Policy)}
    missing = sorted(set(tomllib.loads(text)) - known - {"version", "sgx", "tdx", "sim"})
    if missing:
        options = [o for o, f in POLICY_FIELDS.items() if f in missing]
        raise SystemExit(
            f"this sealserve's KBS policy has no field {missing[0]} "
            f"(--{options[0].replace('_', '-') if options else missing[0]}): update sealserve"
        )
    try:
        Policy.from_toml(text, source="generated policy")
    except SealserveError as err:
        raise SystemExit(str(err)) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("defines", help="gramine-manifest -D options for this interpreter")
    policy = sub.add_parser("policy", help="KBS policy TOML from sigstruct-view JSON")
    policy.add_argument("sigstruct_json", help="output of gramine-sgx-sigstruct-view -o json")
    policy.add_argument(
        "--accept-tcb-status",
        action="append",
        metavar="STATUS",
        help="a TCB status to accept besides UpToDate (repeat; e.g. SWHardeningNeeded)",
    )
    policy.add_argument("--deny-advisory", action="append", metavar="INTEL-SA-NNNNN")
    policy.add_argument(
        "--accept-advisory",
        action="append",
        metavar="INTEL-SA-NNNNN",
        help="an advisory a non-UpToDate platform may carry (repeat); others are refused",
    )
    policy.add_argument(
        "--mr-signer",
        metavar="HEX|any",
        help="the builder's MRSIGNER (or any) instead of the SIGSTRUCT's: for a rebuilt enclave",
    )
    policy.add_argument("--tcb-grace-period-seconds", type=int, metavar="N")
    policy.add_argument("--max-collateral-age-seconds", type=int, metavar="N")
    check = sub.add_parser("compare", help="compare a rebuilt enclave's MRENCLAVE")
    check.add_argument("sigstruct_json")
    wanted = check.add_mutually_exclusive_group(required=True)
    wanted.add_argument("--mrenclave", action="append", metavar="HEX")
    wanted.add_argument("--policy", metavar="FILE", help="a KBS policy pinning mr_enclave")
    args = parser.parse_args(argv)
    if args.command == "defines":
        for key, value in python_defines().items():
            if _UNSAFE.search(value):
                raise SystemExit(f"{key} {value!r}: white space and quotes are not supported")
            print(f"-D{key}={value}")
    elif args.command == "policy":
        sigstruct = json.loads(Path(args.sigstruct_json).read_text())
        statuses = args.accept_tcb_status
        text = policy_toml(
            sigstruct,
            mr_signer=args.mr_signer,
            accept_tcb_status=["UpToDate", *statuses] if statuses else None,
            deny_advisory=args.deny_advisory,
            accept_advisory=args.accept_advisory,
            tcb_grace_period_seconds=args.tcb_grace_period_seconds,
            max_collateral_age_seconds=args.max_collateral_age_seconds,
        )
        _check_with_sealserve(text)
        sys.stdout.write(text)
    else:
        sigstruct = json.loads(Path(args.sigstruct_json).read_text())
        expected = args.mrenclave or _pinned_mrenclaves(args.policy)
        same, message = compare(sigstruct, expected)
        print(message)
        return 0 if same else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
