"""TLS for the REST and gRPC ports: TF Serving's `--ssl_config_file` and the server-side TLS
contexts built from it.

Owns:
- `parse_ssl_config`: TF Serving's `SSLConfig` text proto (`config/ssl_config.proto`:
  `server_key`, `server_cert`, `custom_ca`, `client_verify`, PEM text inline), parsed by
  protobuf's own `text_format` from a descriptor (`config_protos`: `tensorflow-serving-api`
  ships no `ssl_config_pb2`), so a file means what it means to TF Serving. One leniency real
  files need: raw newlines inside quoted strings (hand-written configs paste PEM text
  between quotes) are read as `\n`. Parse errors are one line with the line number, and
  never echo a value (it could be a piece of a key).
- `load_ssl_config`: the same, from a file that may be a Gramine protected file, decrypted in
  memory with the wrap key given by `--ssl_config_key`; a protected file must be bound to
  the path it is read from (as Gramine checks), so another protected file under the same key
  cannot stand in for it. `require_client_verify` (`--require_client_cert`, part of the
  measured command line) refuses a config without `client_verify`: an older one-way
  `ssl.cfg` under the same key cannot turn mutual TLS off.
- `server_ssl_context` (aiohttp) and `grpc_server_credentials` (grpc).
- `format_ssl_config`: the text proto written back, in a form protobuf's own parser (and so
  TF Serving) accepts; `tools/certs.py` writes `ssl.cfg` with it.

Invariants:
- A parsed `SSLConfig` is valid: the PEMs parse, the key is unencrypted and matches the first
  certificate of `server_cert`, and `client_verify` comes with a `custom_ca`. Its PEM text is
  canonical (certificates re-encoded, the key as PKCS#8), so OpenSSL (REST) and BoringSSL
  (gRPC) see the same well-formed input whatever layout the file used (the seed's script
  writes each PEM's base64 as one long line).
- Both ports enforce the same policy: TLS 1.2 or newer; with `client_verify`, a client
  certificate chaining to `custom_ca` is required; without it, none is requested (TF
  Serving's behaviour: `custom_ca` only matters with `client_verify`).
- The server's private key never touches a file system (see `_private_key_file`), and key
  material never appears in a `repr`, a log line or an error message.

Thread safety: every function is pure or builds a new object; `SSLConfig` is immutable.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import logging
import os
import re
import shutil
import ssl
import stat
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from google.protobuf import text_format

from sealserve.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from sealserve.fsio import read_user_file
from sealserve.protected_files import BoundPathMismatch, ProtectedFileReader
from sealserve.protected_files.format import FILE_ID, display_path, normalize_path
from sealserve.serving import config_protos

if TYPE_CHECKING:
    import grpc

log = logging.getLogger(__name__)

SSL_CONFIG_KEY_FLAG = "--ssl_config_key"
MIN_RSA_BITS = 2048  # OpenSSL 3's default security level 2 refuses smaller keys anyway
# Forward-secret AEAD suites only for TLS 1.2 (TLS 1.3 suites are all AEAD and are not
# affected by set_ciphers). The ECDHE suites cover both ECDSA and RSA certificates.
_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


@dataclass(frozen=True)
class SSLConfig:
    """TF Serving's SSLConfig: PEM text of the server key, its certificate chain (leaf first)
    and the CA bundle client certificates are verified against ("" for none)."""

    server_key: str = field(repr=False)
    server_cert: str
    custom_ca: str
    client_verify: bool

    def __repr__(self) -> str:
        # never the key; the certificates are public but long, so only how many there are
        return (
            f"SSLConfig(server_key=<redacted>, server_cert=<{_count_pem(self.server_cert)} "
            f"certificate(s)>, custom_ca=<{_count_pem(self.custom_ca)} certificate(s)>, "
            f"client_verify={self.client_verify})"
        )

    __str__ = __repr__


def _count_pem(text: str) -> int:
    return text.count("-----BEGIN CERTIFICATE-----")


# -- the text proto ----------------------------------------------------------------------

_STRING_FIELDS = ("server_key", "server_cert", "custom_ca")


def _with_escaped_newlines(text: str) -> str:
    """Raw newlines inside quoted strings written as `\\n`: protobuf refuses them, but PEM
    pasted between quotes spans lines and TF Serving users write such files by hand. Quotes
    inside `#` comments and escaped quotes inside strings are respected."""
    out: list[str] = []
    quote = ""  # the open string's quote character, "" outside strings
    i = 0
    while i < len(text):
        char = text[i]
        if quote:
            if char == "\\" and i + 1 < len(text):
                out.append(text[i : i + 2])
                i += 2
                continue
            if char == quote:
                quote = ""
            out.append("\\n" if char == "\n" else char)
        elif char == "#":
            end = text.find("\n", i)
            end = len(text) if end < 0 else end
            out.append(text[i:end])
            i = end
            continue
        else:
            if char in "'\"":
                quote = char
            out.append(char)
        i += 1
    return "".join(out)


# What protobuf's parse errors mean, said without protobuf's echo of the offending line
# (which could be a line of a pasted key): (pattern in protobuf's message, our text).
_PARSE_ERRORS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), text)
    for pattern, text in (
        (
            r'has no field named "(\w{1,64})',
            "unknown field '{0}' (SSLConfig has server_key, server_cert, custom_ca, client_verify)",
        ),
        (r'should not have multiple "(\w+)" fields', "field '{0}' is set more than once"),
        (r'Expected "true" or "false"', "field 'client_verify' must be true or false"),
        (r"Expected string", "field '{field}' needs a quoted string"),
        (r"String missing ending quote", "unterminated string"),
        (r"parse string|codec|escape", "invalid string (a bad escape, or not UTF-8 text)"),
        (r'Expected ":"', "expected ':' after the field name (as in server_key: \"...\")"),
        (r"Expected identifier", "expected a field name"),
    )
)
_LINE_FIELD = re.compile(r"^\d+:\d+ : '\s*(server_key|server_cert|custom_ca|client_verify)\b")


def _parse_error_text(exc: Exception) -> str:
    raw = str(exc)
    what = "not an SSLConfig text proto"
    for pattern, text in _PARSE_ERRORS:
        found = pattern.search(raw)
        if found:
            field = _LINE_FIELD.match(raw)
            what = text.format(*found.groups(), field=field.group(1) if field else "?")
            break
    line = exc.GetLine() if isinstance(exc, text_format.ParseError) else None
    return f"line {line}: {what}" if line else what


def parse_ssl_config(text: str, source: str) -> SSLConfig:
    """Parse and validate an SSLConfig text proto; `source` names it in error messages."""
    message = config_protos.message("SSLConfig")
    try:
        with warnings.catch_warnings():  # protobuf warns of an octal escape past \377 before
            warnings.simplefilter("ignore", DeprecationWarning)  # failing on it: one message
            text_format.Parse(_with_escaped_newlines(text), message)
    except (text_format.ParseError, ValueError) as exc:  # ValueError: bad UTF-8 in a string
        raise InvalidArgument(f"invalid ssl config {source}: {_parse_error_text(exc)}") from None
    return _validated(
        {
            "server_key": message.server_key,
            "server_cert": message.server_cert,
            "custom_ca": message.custom_ca,
            "client_verify": message.client_verify,
        },
        source,
    )


def _validated(values: dict[str, str | bool], source: str) -> SSLConfig:
    def invalid(what: str) -> InvalidArgument:
        return InvalidArgument(f"invalid ssl config {source}: {what}")

    server_key = str(values.get("server_key", ""))
    server_cert = str(values.get("server_cert", ""))
    custom_ca = str(values.get("custom_ca", ""))
    client_verify = bool(values.get("client_verify", False))
    for name, value in (("server_key", server_key), ("server_cert", server_cert)):
        if not value.strip():
            raise invalid(f"{name} is missing or empty")
    if client_verify and not custom_ca.strip():
        raise invalid(
            "client_verify is true but custom_ca is empty (client certificates need a CA)"
        )

    # The causes are dropped (`from None`): the parsers' messages are generic, but the
    # exception chain would carry the key bytes in its traceback frames.
    try:
        key = serialization.load_pem_private_key(server_key.encode("ascii"), password=None)
    except TypeError:
        raise invalid(
            "server_key is an encrypted private key; the ssl config needs it unencrypted "
            f"(protect the whole file instead: encrypt it and give {SSL_CONFIG_KEY_FLAG})"
        ) from None
    except (ValueError, UnicodeEncodeError, UnsupportedAlgorithm):
        raise invalid("server_key is not a PEM private key") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise invalid(
                f"server_key is a {key.key_size}-bit RSA key; use at least {MIN_RSA_BITS} bits"
            )
    elif not isinstance(
        key, (ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)
    ):
        raise invalid("server_key must be an RSA, ECDSA or EdDSA key")

    chain = _certificates(server_cert, "server_cert", invalid)
    if chain[0].public_key() != key.public_key():
        raise invalid("server_key does not match server_cert (the certificate is for another key)")
    authorities = _certificates(custom_ca, "custom_ca", invalid) if custom_ca.strip() else []
    _warn_if_not_current(chain[0], source)

    return SSLConfig(
        server_key=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode("ascii"),
        server_cert=_pem_text(chain),
        custom_ca=_pem_text(authorities),
        client_verify=client_verify,
    )


def _certificates(
    text: str, name: str, invalid: Callable[[str], InvalidArgument]
) -> list[x509.Certificate]:
    try:
        certificates = x509.load_pem_x509_certificates(text.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        certificates = []
    if not certificates:
        raise invalid(f"{name} is not PEM certificate text")
    return certificates


def _pem_text(certificates: list[x509.Certificate]) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in certificates)


def _warn_if_not_current(certificate: x509.Certificate, source: str) -> None:
    # A warning, not an error: TF Serving starts with such a certificate too, and refusing
    # to start would turn a clock problem into an outage. Clients will refuse it, though.
    now = datetime.datetime.now(datetime.UTC)
    if now > certificate.not_valid_after_utc:
        log.warning(
            "server certificate in %s expired on %s; clients will refuse it",
            source,
            certificate.not_valid_after_utc.isoformat(),
        )
    elif now < certificate.not_valid_before_utc:
        log.warning(
            "server certificate in %s is not valid before %s; clients will refuse it until then",
            source,
            certificate.not_valid_before_utc.isoformat(),
        )


def format_ssl_config(config: SSLConfig, *, comment: str = "") -> str:
    """The text proto of `config`, one string literal per PEM line, escaped as protobuf's
    text format requires (no raw newlines), so TF Serving itself can read it too."""
    lines = [f"# {line}".rstrip() for line in comment.splitlines()]
    for name in _STRING_FIELDS:
        value: str = getattr(config, name)
        pieces = value.splitlines(keepends=True) or [""]
        lines.append(f"{name}:")
        lines.extend(f"  '{_escape(piece)}'" for piece in pieces)
    lines.append(f"client_verify: {'true' if config.client_verify else 'false'}")
    return "\n".join(lines) + "\n"


def _escape(text: str) -> str:
    out = []
    for byte in text.encode("utf-8"):
        char = chr(byte)
        if char == "\n":
            out.append("\\n")
        elif char in "\\'\"":
            out.append("\\" + char)
        elif 0x20 <= byte < 0x7F:
            out.append(char)
        else:
            out.append(f"\\{byte:03o}")
    return "".join(out)


# -- the file ------------------------------------------------------------------------------


def load_ssl_config(
    path: str | os.PathLike[str],
    key: bytes | None,
    *,
    require_client_verify: bool = False,
    require_protected: bool = False,
) -> SSLConfig:
    """Read `--ssl_config_file`: plain text, or a Gramine protected file decrypted in memory
    with `key` (the plaintext is never written anywhere) and bound to `path`.

    `require_client_verify`: refuse a config that does not ask for client certificates.
    `require_protected`: refuse a plain file (an attested server: a plain file's key and CA
    are the host's to choose)."""
    path = Path(path)
    raw = read_user_file(path, "ssl config file")  # read once: what is checked is decrypted

    if raw.startswith(FILE_ID):
        if key is None:
            raise InvalidArgument(
                f"ssl config {path} is encrypted (a Gramine protected file); "
                f"give its wrap key with {SSL_CONFIG_KEY_FLAG}"
            )
        with ProtectedFileReader(io.BytesIO(raw), key, name=str(path)) as reader:
            _check_bound_path(path, reader.bound_path)
            raw = reader.read_all()
    else:
        if require_protected:
            raise FailedPrecondition(
                f"ssl config {path} is a plain file, so its key and CA are whoever wrote it; "
                "an attested server needs it encrypted (sealserve certs ... --encrypt-ssl-cfg) "
                f"and its key named by {SSL_CONFIG_KEY_FLAG}"
            )
        # a key given for a plain file is not an error: callers may pass a default key
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning(
                "ssl config %s holds a private key and is accessible to other users (mode %o)",
                path,
                mode & 0o777,
            )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument(f"invalid ssl config {path}: not UTF-8 text") from None
    config = parse_ssl_config(text, str(path))
    if require_client_verify and not config.client_verify:
        raise PermissionDenied(
            f"ssl config {path} does not require client certificates (client_verify is "
            "false), but --require_client_cert is set: refusing to serve without mutual TLS"
        )
    return config


def _check_bound_path(path: Path, bound: bytes) -> None:
    """As Gramine: a protected file opens only at the path bound into it (given as is, or
    made absolute), so another file under the same key cannot be swapped in."""
    accepted = {normalize_path(os.fspath(path)), normalize_path(os.path.abspath(path))}
    if bound not in accepted:
        raise BoundPathMismatch(
            f"ssl config {path} was encrypted for '{display_path(bound)}', not for this path "
            "(another protected file under the same key?); encrypt it for the path the "
            "server reads it from"
        )


# -- contexts ------------------------------------------------------------------------------


def server_ssl_context(config: SSLConfig) -> ssl.SSLContext:
    """The server-side context of the REST port (aiohttp): TLS ≥ 1.2, HTTP/1.1 by ALPN, and
    a verified client certificate required when `client_verify` is set."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(_TLS12_CIPHERS)
    context.options |= ssl.OP_NO_RENEGOTIATION  # client-initiated renegotiation costs CPU
    context.set_alpn_protocols(["http/1.1"])  # aiohttp's server speaks HTTP/1.1 only
    with _private_key_file(config) as (chain_path, password):
        context.load_cert_chain(chain_path, password=password)
    if config.client_verify:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata=config.custom_ca)
    else:
        # TF Serving ignores custom_ca without client_verify; asking for an optional
        # certificate would only make the two ports behave differently
        context.verify_mode = ssl.CERT_NONE
    return context


@contextlib.contextmanager
def _private_key_file(config: SSLConfig) -> Iterator[tuple[str, bytes | None]]:
    """A path `SSLContext.load_cert_chain` can read the key and chain from, and the password
    of the key in it, for the duration of the block.

    The ssl module loads keys only from files. The file is an anonymous memory file
    (`memfd_create`) opened through `/proc/self/fd/N`: it lives in RAM, has no name in any
    file system and disappears when closed, so the plaintext key never reaches a disk (or
    an untrusted host, inside an enclave). Where memfd or /proc is unavailable, the key is
    written to a private temporary file encrypted (PKCS#8, AES-256) under a random one-time
    password that exists only in this process, and the file is removed right after loading.
    """
    key_pem = config.server_key.encode("ascii")
    chain_pem = config.server_cert.encode("ascii")
    fd = _memfd()
    if fd is not None:
        try:
            view = memoryview(key_pem + chain_pem)
            while view:
                view = view[os.write(fd, view) :]
            yield f"/proc/self/fd/{fd}", None
        finally:
            os.close(fd)
        return

    log.info("memfd_create unavailable: loading the TLS key through an encrypted temporary file")
    password = os.urandom(32)
    key = serialization.load_pem_private_key(key_pem, password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password),
    )
    directory = tempfile.mkdtemp(prefix="sealserve-tls-")  # mode 0700
    try:
        path = os.path.join(directory, "chain.pem")
        out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(out, "wb") as file:
            file.write(encrypted + chain_pem)
        yield path, password
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _memfd() -> int | None:
    create = getattr(os, "memfd_create", None)
    if create is None:
        return None
    try:
        fd: int = create("sealserve-tls", getattr(os, "MFD_CLOEXEC", 1))
    except OSError:  # e.g. a seccomp filter or a runtime without the syscall
        return None
    if not os.path.exists(f"/proc/self/fd/{fd}"):  # no /proc mounted
        os.close(fd)
        return None
    return fd


def reload_server_certificate(context: ssl.SSLContext, config: SSLConfig) -> None:
    """Serve `config`'s key and certificate on a live REST context from the next handshake
    on (a renewed certificate; client verification stays as it was)."""
    with _private_key_file(config) as (chain_path, password):
        context.load_cert_chain(chain_path, password=password)


def grpc_server_credentials(
    config: SSLConfig, current: Callable[[], SSLConfig] | None = None
) -> grpc.ServerCredentials:
    """The credentials of the gRPC port; with `current`, gRPC asks it for the configuration
    at each new connection, so a renewed certificate is served without a restart.

    gRPC core negotiates TLS 1.2 or 1.3 only: its TLS credentials default to
    `min_tls_version = TLS1_2` (grpc_tls_credentials_options.h) and grpcio offers no way to
    lower it; tests/serving/test_tls.py checks that a TLS 1.1 client is refused. The key
    stays in memory (gRPC takes PEM bytes)."""
    import grpc

    # like the REST port, and TF Serving: the CA matters only when clients are verified
    roots = config.custom_ca.encode("ascii") if config.client_verify else None
    if current is None:
        return grpc.ssl_server_credentials(
            [(config.server_key.encode("ascii"), config.server_cert.encode("ascii"))],
            root_certificates=roots,
            require_client_auth=config.client_verify,
        )

    def certificate_configuration(cfg: SSLConfig) -> Any:
        pair = (cfg.server_key.encode("ascii"), cfg.server_cert.encode("ascii"))
        return grpc.ssl_server_certificate_configuration([pair], root_certificates=roots)

    served = [config]

    def fetch() -> Any:  # None: keep serving the configuration gRPC has
        latest = current()
        if latest is served[0]:
            return None
        served[0] = latest
        return certificate_configuration(latest)

    return grpc.dynamic_ssl_server_credentials(
        certificate_configuration(config), fetch, require_client_authentication=config.client_verify
    )
