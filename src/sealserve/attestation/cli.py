"""Operator commands for evidence: `sealserve sim init`, `sealserve attest verify|quote`.

With these, the real Intel vectors and a simulated quote can be checked from the shell:
`attest verify` prints the verified claims as JSON (and the policy's decision when given one)
and exits non-zero with the reason when verification or the policy fails. Wired into
`sealserve.cli`; errors are `SealserveError`s, printed there as one line.
"""

from __future__ import annotations

import argparse
import binascii
import json
import time
from pathlib import Path

from sealserve.attestation.attesters import CocoAttester, GramineAttester, TsmAttester
from sealserve.attestation.collateral import load_collateral
from sealserve.attestation.errors import AttestationFailed
from sealserve.attestation.evidence import Attester
from sealserve.attestation.policy import Policy
from sealserve.attestation.sim import SimAttester, init_sim
from sealserve.attestation.verify import is_intel_root, pck_root_der, verify_quote
from sealserve.errors import InvalidArgument
from sealserve.fsio import atomic_output_file, read_user_file

ATTESTERS = ("sim", "gramine", "tsm", "coco")


def add_sim_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="sim_command", required=True)
    init = sub.add_parser("init", help="create a simulated TEE: a local DCAP PKI and collateral")
    init.add_argument("directory", metavar="DIR", help="directory to create")
    init.set_defaults(run=run_sim_init)


def run_sim_init(args: argparse.Namespace) -> int:
    tee = init_sim(args.directory)
    print(f"created a simulated TEE in {tee.directory}")
    print(
        f"  root of trust (give it to the KBS, --insecure-trust-sim-root): "
        f"{tee.directory / 'root_ca.der'}"
    )
    print(
        f"  collateral: {tee.directory / 'collateral.json'} "
        f"(valid until {time.strftime('%Y-%m-%d', time.gmtime(tee.collateral.expires_at))})"
    )
    return 0


def add_attest_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="attest_command", required=True)
    verify = sub.add_parser("verify", help="verify a DCAP quote and print its claims as JSON")
    verify.add_argument("--quote", required=True, metavar="FILE", help="quote (binary or hex)")
    verify.add_argument(
        "--collateral", required=True, metavar="FILE", help="QuoteCollateralV3 JSON"
    )
    verify.add_argument("--at", type=int, metavar="UNIX_TIME", help="verify as of this time")
    verify.add_argument("--root-ca", metavar="DER", help="root CA other than Intel's (sim)")
    verify.add_argument("--policy", metavar="FILE", help="also decide with this policy")
    verify.set_defaults(run=run_attest_verify)
    quote = sub.add_parser("quote", help="produce a quote with an attester")
    quote.add_argument("--attester", required=True, choices=ATTESTERS)
    quote.add_argument("--sim-dir", metavar="DIR", help="the simulated TEE (--attester sim)")
    quote.add_argument(
        "--report-data", required=True, metavar="HEX", help="up to 64 bytes, hex; zero-padded"
    )
    quote.add_argument("-o", "--output", required=True, metavar="FILE")
    quote.set_defaults(run=run_attest_quote)


def read_quote(path: str) -> bytes:
    raw = read_user_file(path, "quote file")
    text = raw.strip()
    try:  # hex files (the vectors' *.hex) or binary quotes
        if text and all(c in b"0123456789abcdefABCDEFx" for c in text):
            return binascii.unhexlify(text.removeprefix(b"0x"))
    except (binascii.Error, ValueError):
        pass
    return raw


def run_attest_verify(args: argparse.Namespace) -> int:
    now = args.at if args.at is not None else int(time.time())
    root = read_user_file(args.root_ca, "root CA file") if args.root_ca else None
    quote = read_quote(args.quote)
    try:
        claims = verify_quote(quote, load_collateral(args.collateral), now=now, root_ca_der=root)
    except AttestationFailed as err:
        quote_root = pck_root_der(quote)
        if root is None and quote_root is not None and not is_intel_root(quote_root):
            hint = "a simulated TEE's quote verifies with --root-ca SIM_DIR/root_ca.der"
            raise AttestationFailed(f"{err} ({hint})", reason=err.reason) from None
        raise
    document: dict[str, object] = {"claims": claims.to_json()}
    reasons: list[str] = []
    if args.policy:
        decision = Policy.load(args.policy).decide(claims, now)
        reasons = [] if decision.allowed else list(decision.reasons)
        document["decision"] = {"allowed": decision.allowed, "reasons": list(decision.reasons)}
    # flushed: where stdout and stderr share a pipe, the claims come before the verdict on them
    print(json.dumps(document, indent=2, sort_keys=True), flush=True)
    if reasons:
        raise InvalidArgument("the policy denies this evidence: " + "; ".join(reasons))
    return 0


def attester_for(
    kind: str, sim_dir: str | None, launch_config: dict[str, object] | None = None
) -> Attester:
    if kind == "sim":
        if not sim_dir:
            raise InvalidArgument("the sim attester needs its directory (--sim-dir)")
        return SimAttester(sim_dir, launch_config=launch_config or {})
    if kind == "gramine":
        return GramineAttester()
    if kind == "tsm":
        return TsmAttester()
    if kind == "coco":
        return CocoAttester()
    raise InvalidArgument(f"unknown attester {kind!r}; choose from {', '.join(ATTESTERS)}")


def run_attest_quote(args: argparse.Namespace) -> int:
    try:
        report_data = binascii.unhexlify(args.report_data)
    except (binascii.Error, ValueError):
        raise InvalidArgument("--report-data must be hex") from None
    if len(report_data) > 64:
        raise InvalidArgument("--report-data is at most 64 bytes")
    evidence = attester_for(args.attester, args.sim_dir).evidence(report_data.ljust(64, b"\0"))
    with atomic_output_file(Path(args.output)) as out:
        out.write(evidence.quote)
    print(f"wrote a {evidence.tee} quote ({len(evidence.quote)} bytes) to {args.output}")
    return 0
