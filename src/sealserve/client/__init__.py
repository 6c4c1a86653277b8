"""The requester's side: what `sealserve client` (the benchmark) and `sealserve predict` share.

Owns the TLS rule both commands follow, the gRPC channel options and REST endpoints they
use, and how a failed call is reported. Only standard TF Serving APIs are spoken, so both
tools work against sealserve and any stock TF Serving.

TLS rule, a superset of the seed's `resnet_client_grpc.py` (`-ca`, `-crt`, `-key`):

| given                 | connection                                                       |
|-----------------------|------------------------------------------------------------------|
| nothing               | plaintext ("insecure channel")                                   |
| `ca`                  | one-way TLS, the server checked against `ca`                     |
| `crt`                 | one-way TLS with `crt` as the trust root (the seed's             |
|                       | `-crt server/cert.pem`, a self-signed server certificate)        |
| `crt` + `key` (+`ca`) | mutual TLS: `crt`/`key` are the client's; the server is checked  |
|                       | against `ca` (without it, against the system's roots)            |
| `ca` + `crt`, no key  | refused: a client certificate needs its key                      |
| `key` without `crt`   | refused                                                          |

Host names are always checked (gRPC and Python's ssl do it by default); `server_name`
overrides the name checked when the address is an IP or a balancer (`sealserve certs` puts
IPs given with `--san` in the certificate, so `127.0.0.1` works without it).

Importing this module imports neither gRPC nor TensorFlow; the functions that need gRPC
import it. Everything here is stateless and thread safe.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sealserve.errors import Code, InvalidArgument, SealserveError
from sealserve.fsio import read_user_file

if TYPE_CHECKING:
    import grpc

__all__ = [
    "PREDICT_METHOD",
    "TlsFiles",
    "grpc_channel_options",
    "grpc_credentials",
    "grpc_error_text",
    "rest_base_url",
    "ssl_context",
    "tls_files",
]

PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"
"""The full gRPC method name of TF Serving's Predict (prediction_service.proto)."""

GRPC_DEFAULT_PORT = 8500
REST_DEFAULT_PORT = 8501


@dataclass(frozen=True)
class TlsFiles:
    """TLS material read from the files the user named (PEM bytes, kept in memory only)."""

    root: bytes | None  # trust root; None: the system's
    root_path: str | None
    cert_chain: bytes | None  # client certificate (mutual TLS)
    cert_path: str | None
    private_key: bytes | None = None
    key_path: str | None = None
    server_name: str | None = None

    @property
    def mutual(self) -> bool:
        return self.cert_chain is not None

    @property
    def mode(self) -> str:
        return "mutual TLS" if self.mutual else "one-way TLS"

    def __repr__(self) -> str:  # never show the private key
        return (
            f"TlsFiles(root={self.root_path!r}, cert={self.cert_path!r}, "
            f"key={self.key_path!r}, server_name={self.server_name!r})"
        )


def tls_files(
    ca: str | None,
    crt: str | None,
    key: str | None,
    server_name: str | None = None,
    *,
    flags: tuple[str, str, str] = ("--ca", "--cert", "--key"),
) -> TlsFiles | None:
    """Apply the TLS rule of the module docstring; None means plaintext. `flags` names the
    options in error messages."""
    ca_flag, crt_flag, key_flag = flags
    if key and not crt:
        raise InvalidArgument(f"{key_flag} needs {crt_flag}: the client certificate of that key")
    if ca and crt and not key:
        raise InvalidArgument(
            f"{crt_flag} with {ca_flag} is a client certificate and needs {key_flag}; "
            f"for one-way TLS give only {ca_flag} (or only {crt_flag}, as the seed's client)"
        )
    if not (ca or crt):
        if server_name:
            raise InvalidArgument("a TLS server name needs TLS: give --ca or --cert")
        return None
    if key:
        assert crt is not None
        return TlsFiles(
            root=read_user_file(ca, "CA certificate") if ca else None,
            root_path=ca,
            cert_chain=read_user_file(crt, "client certificate"),
            cert_path=crt,
            private_key=read_user_file(key, "client key"),
            key_path=key,
            server_name=server_name,
        )
    root_path = ca or crt
    assert root_path is not None
    return TlsFiles(
        root=read_user_file(root_path, "CA certificate"),
        root_path=root_path,
        cert_chain=None,
        cert_path=None,
        server_name=server_name,
    )


def grpc_credentials(tls: TlsFiles) -> grpc.ChannelCredentials:
    import grpc

    return grpc.ssl_channel_credentials(
        root_certificates=tls.root,
        private_key=tls.private_key,
        certificate_chain=tls.cert_chain,
    )


def grpc_channel_options(
    tls: TlsFiles | None, *, own_connection: bool = False
) -> list[tuple[str, Any]]:
    """Channel arguments: unlimited message sizes (a batch of 64 ResNet-50 images is 38 MB,
    over gRPC's 4 MB default; the server has its own cap), the TLS name override, and with
    `own_connection` a private subchannel pool. Without that, gRPC shares one TCP connection
    between all channels of a process that have the same target and arguments, and "16
    concurrent connections" would be 16 streams on one connection (one TLS session, one
    server-side socket, one backend behind an L4 balancer)."""
    options: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", -1),
        ("grpc.max_receive_message_length", -1),
    ]
    if own_connection:
        options.append(("grpc.use_local_subchannel_pool", 1))
    if tls is not None and tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    return options


def grpc_target(address: str) -> str:
    """`host:port` for gRPC; a bare host gets TF Serving's gRPC port, 8500."""
    address = address.strip()
    if not address:
        raise InvalidArgument("the server address is empty")
    if "://" in address:
        raise InvalidArgument(
            f"{address!r} is a URL; gRPC takes HOST:PORT (use --rest for a REST URL)"
        )
    if _has_port(address):
        return address
    return f"{address}:{GRPC_DEFAULT_PORT}"


def _has_port(address: str) -> bool:
    if address.startswith("["):  # [::1]:8500
        return "]:" in address
    return address.count(":") == 1


def rest_base_url(address: str, secure: bool) -> str:
    """`scheme://host:port` from `host[:port]` or a URL. The scheme follows the TLS options
    (https when TLS material is given), and a URL's explicit scheme must agree with them:
    sending a request meant for TLS over plain HTTP would be a silent downgrade."""
    address = address.strip().rstrip("/")
    if not address:
        raise InvalidArgument("the server address is empty")
    match = re.fullmatch(r"(?:(https?)://)?([^/]+)", address, flags=re.IGNORECASE)
    if match is None:
        raise InvalidArgument(
            f"{address!r} is not a REST endpoint: give HOST[:PORT] or http(s)://HOST[:PORT]"
        )
    scheme, authority = match.group(1), match.group(2)
    if scheme is not None:
        scheme = scheme.lower()
        if scheme == "http" and secure:
            raise InvalidArgument(f"TLS options were given but {address} is http://; use https://")
    else:
        scheme = "https" if secure else "http"
    if not _has_port(authority):
        authority = f"{authority}:{REST_DEFAULT_PORT}"
    return f"{scheme}://{authority}"


def model_path(name: str, version: int | None = None, label: str | None = None) -> str:
    """TF Serving's REST path of a model: `/v1/models/NAME[/versions/N|/labels/L]`."""
    if not name:
        raise InvalidArgument("the model name is empty")
    if version is not None and label:
        raise InvalidArgument("give a model version or a version label, not both")
    path = f"/v1/models/{name}"
    if version is not None:
        path += f"/versions/{version}"
    elif label:
        path += f"/labels/{label}"
    return path


def ssl_context(tls: TlsFiles) -> ssl.SSLContext:
    """A client context for REST: TLS >= 1.2, certificate and host name checked."""
    try:
        if tls.root_path is None and tls.root is not None:  # a pinned certificate, in memory
            context = ssl.create_default_context(cadata=tls.root.decode())
        else:
            context = ssl.create_default_context(cafile=tls.root_path)  # None: system roots
    except ssl.SSLError as exc:
        raise InvalidArgument(
            f"cannot use CA certificate {tls.root_path}: {exc.reason or exc}"
        ) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.cert_path and tls.key_path:
        try:
            context.load_cert_chain(tls.cert_path, tls.key_path)
        except ssl.SSLError as exc:
            raise InvalidArgument(
                f"cannot use client certificate {tls.cert_path} with key {tls.key_path}: "
                f"{exc.reason or exc}"
            ) from None
    return context


def needs_client_certificate(address: str, tls: TlsFiles | None, timeout: float = 5.0) -> bool:
    """Whether the TLS server at `address` (host:port or URL) turns away a client that shows
    no certificate: after a handshake without one, it sends the certificate_required alert
    (TLS 1.3), a handshake failure (TLS 1.2), or closes the connection before any answer.
    Asked only after a connection failed, to say why in one sentence."""
    import socket
    from urllib.parse import urlsplit

    if tls is None or tls.mutual:
        return False
    parts = urlsplit(address if "://" in address else f"//{address}")
    if not parts.hostname or not parts.port:
        return False
    try:
        context = ssl_context(tls)
        context.check_hostname = False  # the question is only whether a certificate is asked
        context.verify_mode = ssl.CERT_NONE
        context.set_alpn_protocols(["h2", "http/1.1"])
        with (
            socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock,
            context.wrap_socket(sock) as conn,
        ):
            # an HTTP/2 preface or an HTTP/1.1 request: either server answers something
            conn.sendall(
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
                if conn.selected_alpn_protocol() == "h2"
                else b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            return conn.recv(1) == b""
    except ssl.SSLError as err:
        return "CERTIFICATE_REQUIRED" in str(err).upper() or "HANDSHAKE_FAILURE" in str(err).upper()
    except OSError:
        return False


def client_certificate_error(flags: tuple[str, str] = ("--cert", "--key")) -> SealserveError:
    cert, key = flags
    return SealserveError(
        f"the server requires a client certificate (mutual TLS): give {cert} and {key}",
        code=Code.UNAUTHENTICATED,
    )


def grpc_error_text(error: Any) -> tuple[str, str]:
    """(status code name, details) of a failed gRPC call, details on one line."""
    code = error.code()
    name = code.name if code is not None else "UNKNOWN"
    details = error.details() or ""
    return name, " ".join(details.split())
