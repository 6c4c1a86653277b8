"""The requester verifies the server before sending a byte.

An attested sealserve (`serve --attested_tls`) presents a self-signed RA-TLS certificate whose
TEE evidence binds its TLS key (`serving.attested_identity`). Before any request, the client:

1. opens a TLS connection only to read that certificate (nothing is sent on it);
2. checks that the certificate's quote binds its key (`attestation.ratls`), verifies the quote
   with dcap-qvl against the requester's own collateral (Intel's root; a simulated root only
   when told, `--insecure-trust-sim-root`, with a warning), and applies the requester's policy
   (the same format as the KBS's) to the verified claims; a mismatch aborts, naming the
   failing claim;
3. pins exactly that certificate as the only trust root of the real connection (gRPC channel
   or HTTP client), so the requests go only to the holder of the attested key.

A server that is not attested — an ordinary certificate, even one the owner's CA signed — has
no evidence and is refused at step 2.

Python API::

    check = ServerCheck.from_files("server-policy.toml", collateral=["collateral.json"])
    channel = attested_grpc_channel("server:8500", check)          # grpc.Channel
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    context, name = attested_ssl_context("server:8501", check)     # for HTTP clients

Thread safe; no state beyond the arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from sealserve.attestation import Claims, Collateral, Policy, load_collateral, verify_quote
from sealserve.attestation.errors import AttestationFailed
from sealserve.attestation.ratls import ATTESTED_SERVER_NAME, evidence_from_certificate
from sealserve.attestation.verify import pck_root_der
from sealserve.client import TlsFiles
from sealserve.errors import Code, InvalidArgument, SealserveError
from sealserve.fsio import read_user_file
from sealserve.kbs.server_ca import claims_in_certificate

if TYPE_CHECKING:
    import grpc

__all__ = [
    "ServerCheck",
    "ServerNotAttested",
    "add_arguments",
    "attested_grpc_channel",
    "attested_ssl_context",
    "attested_tls",
    "server_check",
    "verify_server_certificate",
]

log = logging.getLogger(__name__)


class ServerNotAttested(SealserveError):
    """The server's certificate carries no acceptable evidence: nothing was sent to it."""

    code = Code.UNAUTHENTICATED


@dataclass(frozen=True)
class ServerCheck:
    """What the requester accepts: a policy, the collateral to verify quotes against, and
    (insecure, tests and demos) a simulated TEE's root."""

    policy: Policy
    collateral: Collateral | Callable[[bytes], Collateral] | None = field(repr=False)
    insecure_sim_root: bytes | None = field(default=None, repr=False)
    clock: Callable[[], float] = time.time
    #: the owner's KBS server CA (PEM): certificates it issued carry verified claims
    server_ca: bytes | None = field(default=None, repr=False)

    @classmethod
    def from_files(
        cls,
        policy: str,
        *,
        collateral: Sequence[str] = (),
        pccs_url: str | None = None,
        insecure_trust_sim_root: str | None = None,
        server_ca: str | None = None,
    ) -> ServerCheck:
        """From the requester's files: a policy; to check RA-TLS evidence, collateral files or
        a PCCS (and optionally a simulated TEE directory whose root, and collateral if no
        other, is trusted); to check KBS-issued certificates, the KBS's server CA."""
        from sealserve.attestation import load_sim

        ca = read_user_file(server_ca, "server CA certificate") if server_ca else None
        if ca is not None and not (collateral or pccs_url or insecure_trust_sim_root):
            return cls(Policy.load(policy), None, server_ca=ca)

        sim_root = None
        files = [load_collateral(path) for path in collateral]
        if insecure_trust_sim_root:
            sim = load_sim(insecure_trust_sim_root)
            sim_root = sim.root_ca_der
            log.warning(
                "trusting the simulated TEE root in %s: INSECURE, no hardware vouches for "
                "the server (tests and demos only)",
                insecure_trust_sim_root,
            )
            if not files and not pccs_url:
                files.append(sim.collateral)
        if files and pccs_url:
            raise InvalidArgument("give collateral files or a PCCS URL, not both")
        source: Collateral | Callable[[bytes], Collateral]
        if pccs_url:
            source = _pccs_collateral(pccs_url)
        elif len(files) == 1:
            source = files[0]
        elif files:
            from sealserve.kbs.collateral import CollateralFiles

            source = CollateralFiles(files)
        else:
            raise InvalidArgument(
                "verifying the server needs collateral: give --server-collateral FILE or "
                "--pccs-url URL (or --insecure-trust-sim-root DIR)"
            )
        return cls(Policy.load(policy), source, sim_root, server_ca=ca)


def _pccs_collateral(url: str) -> Callable[[bytes], Collateral]:
    from sealserve.attestation import CollateralCache

    cache = CollateralCache(url)

    def fetch(quote: bytes) -> Collateral:
        return asyncio.run(cache.get(quote))

    return fetch


def verify_server_certificate(der: bytes, check: ServerCheck) -> Claims:
    """The verified claims of a server's RA-TLS certificate that `check` accepts;
    `ServerNotAttested` naming what failed otherwise."""
    now = int(check.clock())
    try:
        certificate = x509.load_der_x509_certificate(der)
    except ValueError as err:
        raise ServerNotAttested(f"the server's certificate cannot be read: {err}") from None
    if check.server_ca is not None and claims_in_certificate(certificate) is not None:
        claims = _claims_issued_by(certificate, check.server_ca, now)
    else:
        claims = _claims_of_ra_tls(certificate, check, now)
    decision = check.policy.decide(claims, now)
    if not decision.allowed:
        raise ServerNotAttested(
            "the server's attestation does not satisfy the policy: " + "; ".join(decision.reasons)
        )
    return claims


def _claims_issued_by(certificate: x509.Certificate, ca_pem: bytes, now: int) -> Claims:
    """The claims of a certificate the owner's KBS issued (checked: signed by that CA, valid
    now, for a server)."""
    ca = x509.load_pem_x509_certificate(ca_pem)
    moment = dt.datetime.fromtimestamp(now, dt.UTC)
    try:
        certificate.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise ServerNotAttested(
            "the server's certificate was not issued by the given server CA"
        ) from None
    if not certificate.not_valid_before_utc <= moment <= certificate.not_valid_after_utc:
        raise ServerNotAttested("the server's certificate is not valid now")
    claims = claims_in_certificate(certificate)
    assert claims is not None
    return claims


def _claims_of_ra_tls(certificate: x509.Certificate, check: ServerCheck, now: int) -> Claims:
    if check.collateral is None:
        raise ServerNotAttested(
            "the server's certificate carries no claims from the given server CA"
            + ("" if claims_in_certificate(certificate) else " (not attested)")
        )
    try:
        quote = evidence_from_certificate(certificate, now=now).quote
        sim = check.insecure_sim_root is not None and pck_root_der(quote) == check.insecure_sim_root
        source = check.collateral
        collateral = source if isinstance(source, Collateral) else source(quote)
        claims = verify_quote(
            quote,
            collateral,
            now=now,
            root_ca_der=check.insecure_sim_root if sim else None,
            tee_hint="sim" if sim else None,
        )
    except AttestationFailed as err:
        raise ServerNotAttested(f"the server is not attested: {err.reason}") from None
    return claims


def fetch_server_certificate(
    address: str, default_port: int, client: TlsFiles | None = None, timeout: float = 30
) -> bytes:
    """The DER certificate the TLS server at `address` presents. Only a handshake: nothing
    is sent, and the certificate is not trusted by this call."""
    host, port = split_address(address, default_port)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # judged by `verify_server_certificate`, then pinned
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if client is not None and client.cert_path and client.key_path:
        context.load_cert_chain(client.cert_path, client.key_path)
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as sock,
            context.wrap_socket(sock, server_hostname=ATTESTED_SERVER_NAME) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as err:
        raise SealserveError(
            f"cannot reach {host}:{port} over TLS: {' '.join(str(err).split())}",
            code=Code.UNAVAILABLE,
        ) from None
    if not der:
        raise ServerNotAttested(f"{host}:{port} presented no certificate")
    return der


def split_address(address: str, default_port: int) -> tuple[str, int]:
    """(host, port) of `host`, `host:port`, `[v6]:port` or a URL."""
    text = address.strip()
    parts = urlsplit(text if "://" in text else f"//{text}")
    try:
        port = parts.port or default_port
    except ValueError:
        raise InvalidArgument(f"{address} has an invalid port") from None
    if not parts.hostname:
        raise InvalidArgument(f"{address} names no host")
    return parts.hostname, port


def attested_tls(
    address: str, default_port: int, check: ServerCheck, client: TlsFiles | None = None
) -> TlsFiles:
    """TLS settings that trust only the verified certificate of the server at `address`
    (and present the client's certificate, for mutual TLS, if `client` has one)."""
    der = fetch_server_certificate(address, default_port, client)
    claims = verify_server_certificate(der, check)
    log.info(
        "server %s attested: %s, %s",
        address,
        claims.tee,
        claims.mr_enclave or claims.mr_td,
    )
    certificate = x509.load_der_x509_certificate(der)
    base = client or TlsFiles(root=None, root_path=None, cert_chain=None, cert_path=None)
    if check.server_ca is not None and claims_in_certificate(certificate) is not None:
        # the owner's CA and the certified name: any replica the KBS certified for that name
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        name = names.value.get_values_for_type(x509.DNSName)[0]
        return replace(base, root=check.server_ca, root_path=None, server_name=name)
    # RA-TLS: exactly the certificate whose evidence was verified
    pem = certificate.public_bytes(serialization.Encoding.PEM)
    return replace(base, root=pem, root_path=None, server_name=ATTESTED_SERVER_NAME)


def attested_grpc_channel(
    target: str, check: ServerCheck, client: TlsFiles | None = None, **options: Any
) -> grpc.Channel:
    """A secure gRPC channel to an attested server, verified before it is returned."""
    import grpc

    from sealserve.client import grpc_channel_options, grpc_credentials

    tls = attested_tls(target, 8500, check, client)
    channel_options = grpc_channel_options(tls) + list(options.items())
    return grpc.secure_channel(target, grpc_credentials(tls), options=channel_options)


def attested_ssl_context(
    address: str, check: ServerCheck, client: TlsFiles | None = None
) -> tuple[ssl.SSLContext, str]:
    """An `ssl.SSLContext` trusting only the verified server, and the server name to check
    (pass it as `server_hostname`, e.g. aiohttp's `server_hostname=`)."""
    from sealserve.client import ssl_context

    tls = attested_tls(address, 8501, check, client)
    assert tls.server_name is not None
    return ssl_context(tls), tls.server_name


# --- the commands' flags (`sealserve predict`, `sealserve client`) ---------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("verify the server's attestation before sending anything")
    group.add_argument(
        "--verify-server",
        metavar="POLICY",
        help="attestation policy the server must satisfy (the KBS's policy format)",
    )
    group.add_argument(
        "--server-collateral",
        action="append",
        default=[],
        metavar="FILE",
        help="DCAP collateral JSON to verify the server's quote against (repeatable)",
    )
    group.add_argument("--pccs-url", help="fetch the collateral from this PCCS / Intel PCS")
    group.add_argument(
        "--insecure-trust-sim-root",
        metavar="SIM_DIR",
        help="trust this simulated TEE's root (INSECURE: tests and demos)",
    )
    group.add_argument(
        "--server-ca",
        metavar="PEM",
        help="the owner's KBS server CA: accept certificates it issued to attested servers "
        "(their claims are checked against the policy)",
    )


def requester_tls(
    args: argparse.Namespace,
    address: str,
    default_port: int,
    *,
    flags: tuple[str, str, str] = ("--ca", "--cert", "--key"),
    ca: str | None,
    cert: str | None,
    key: str | None,
    server_name: str | None = None,
) -> TlsFiles | None:
    """The command's TLS: `tls_files`' rule, or, with --verify-server, the server's verified
    certificate pinned (and the client's certificate for mutual TLS)."""
    from sealserve.client import tls_files

    check = server_check(args)
    if check is None:
        return tls_files(ca, cert, key, server_name, flags=flags)
    ca_flag, cert_flag, key_flag = flags
    if ca or server_name:
        raise InvalidArgument(
            f"{ca_flag} and the server-name flag are not used with --verify-server: the "
            "server's attested certificate is what is trusted"
        )
    if bool(cert) != bool(key):
        raise InvalidArgument(f"with --verify-server, {cert_flag} and {key_flag} go together")
    client = tls_files(None, cert, key, flags=flags) if cert else None
    return attested_tls(address, default_port, check, client)


def server_check(args: argparse.Namespace) -> ServerCheck | None:
    """The check the flags ask for; None without --verify-server."""
    if not args.verify_server:
        if args.server_collateral or args.pccs_url or args.insecure_trust_sim_root:
            raise InvalidArgument("the collateral and sim-root flags go with --verify-server")
        if args.server_ca:
            raise InvalidArgument("--server-ca goes with --verify-server")
        return None
    return ServerCheck.from_files(
        args.verify_server,
        collateral=args.server_collateral,
        pccs_url=args.pccs_url,
        insecure_trust_sim_root=args.insecure_trust_sim_root,
        server_ca=args.server_ca,
    )
