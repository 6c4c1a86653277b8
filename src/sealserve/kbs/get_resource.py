"""`sealserve kbs get-resource`: the TEE-side fetch on its own, for debugging a deployment.

What Trustee's `kbs-client get-resource` is to a Trustee KBS: inside the TEE, attest with the
chosen attester (`sim`, `gramine`, `tsm`) and fetch one resource over the same protocol the
server uses (`kbs.client.AttestedSession`), so a denial, an untrusted certificate or a
mismatched measurement shows up before a server is started. The KBS's answer is the one-line
error on failure (a policy denial says only that it was denied; the KBS's audit says why).

The secret is written only where the user asks: `-o FILE` writes it atomically with mode
0600 (never over an existing file unless `--force`), `-o -` writes the raw bytes to stdout.
Nothing else prints it.
"""

from __future__ import annotations

import argparse
import binascii
import sys
from pathlib import Path

from sealserve.errors import InvalidArgument
from sealserve.fsio import PRIVATE_FILE_MODE, atomic_output_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sealserve.attestation.cli import ATTESTERS

    parser.add_argument("resource", help="<repository>/<type>/<tag>, e.g. sealserve/model-key/m")
    parser.add_argument("--url", required=True, help="the KBS, https://host:port")
    parser.add_argument("--ca", help="PEM file of the CA that signed the KBS's certificate")
    parser.add_argument("--attester", required=True, choices=ATTESTERS)
    parser.add_argument("--sim-dir", metavar="DIR", help="the simulated TEE (--attester sim)")
    parser.add_argument(
        "--sim-mr-enclave",
        metavar="HEX",
        help="the simulated enclave's measurement (default: this sealserve's code with no "
        "launch configuration at all, which no server has: give a server's, as `sealserve "
        "measure` with its serve flags prints it)",
    )
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="FILE",
        help="write the secret here (mode 0600); '-' writes its raw bytes to stdout",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing FILE")
    parser.add_argument("--attempts", type=int, default=3, help="tries per request (backoff)")
    parser.set_defaults(kbs_run=run)


def _attester(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from sealserve.attestation.cli import attester_for
    from sealserve.attestation.sim import SimAttester

    if args.sim_mr_enclave is not None:
        if args.attester != "sim" or not args.sim_dir:
            raise InvalidArgument("--sim-mr-enclave goes with --attester sim and --sim-dir")
        try:
            measurement = binascii.unhexlify(args.sim_mr_enclave)
        except (binascii.Error, ValueError):
            raise InvalidArgument("--sim-mr-enclave must be 32 bytes of hex") from None
        if len(measurement) != 32:
            raise InvalidArgument("--sim-mr-enclave must be 32 bytes of hex")
        return SimAttester(args.sim_dir, mr_enclave=measurement)
    return attester_for(args.attester, args.sim_dir)


def run(args: argparse.Namespace) -> int:
    from sealserve.kbs.client import AttestedSession, KbsClient

    output = None if args.output == "-" else Path(args.output)
    if output is not None and output.exists() and not args.force:
        raise InvalidArgument(f"{output} exists (give --force to replace it)")
    client = KbsClient(args.url, ca_pem=args.ca, attempts=max(1, args.attempts))
    secret = AttestedSession(client, _attester(args)).get_resource(args.resource)
    if output is None:
        sys.stdout.buffer.write(secret)
        sys.stdout.buffer.flush()
        return 0
    with atomic_output_file(output, mode=PRIVATE_FILE_MODE, replace=args.force) as out:
        out.write(secret)
    print(f"wrote {args.resource} ({len(secret)} bytes) to {output} (mode 0600)", file=sys.stderr)
    return 0
