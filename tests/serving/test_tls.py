"""TLS config parsing and the REST / gRPC server contexts, with real handshakes on loopback.

Certificates come from `tools.certs` once per module (ECDSA: fast). Every handshake test
starts a real aiohttp server and a real grpc.aio server (the gRPC health service as a trivial
RPC) with the same config, and connects with real clients, hostname checking on.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.protobuf import text_format
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from sealserve.errors import (
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from sealserve.protected_files import BoundPathMismatch
from sealserve.protected_files.format import FILE_ID
from sealserve.serving import config_protos, tls
from sealserve.serving.tls import (
    SSLConfig,
    format_ssl_config,
    grpc_server_credentials,
    load_ssl_config,
    parse_ssl_config,
    server_ssl_context,
)
from sealserve.tools.certs import CertificateSet, make_oneway, make_twoway

WRAP_KEY = bytes(range(16))


@dataclass(frozen=True)
class PKI:
    twoway: CertificateSet
    oneway: CertificateSet
    other: CertificateSet  # another CA: its client certificate must be refused
    encrypted: CertificateSet  # ssl.cfg as a protected file under WRAP_KEY


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    root = tmp_path_factory.mktemp("pki")
    return PKI(
        twoway=make_twoway("localhost", "client", root / "twoway", sans=["127.0.0.1"]),
        oneway=make_oneway("localhost", root / "oneway", sans=["127.0.0.1"]),
        other=make_twoway("localhost", "intruder", root / "other", sans=["127.0.0.1"]),
        encrypted=make_oneway("localhost", root / "encrypted", encrypt_ssl_cfg_key=WRAP_KEY),
    )


def _text(path: Path | None) -> str:
    assert path is not None
    return path.read_text()


def _seed_style(pki: PKI) -> str:
    """What a person pasting PEM files between quotes writes: raw newlines inside quotes."""
    return (
        f"server_key: '{_text(pki.twoway.server_key)}'\n"
        f"server_cert: '{_text(pki.twoway.server_cert)}'\n"
        f"custom_ca: '{_text(pki.twoway.ca_cert)}'\n"
        "client_verify: true\n"
    )


def _seed_script_style(pem: str) -> str:
    """What the seed's generate_twoway_ssl_config.sh writes for one PEM: the lines joined
    (`paste -d "" -s`), then an escaped `\\n` after BEGIN and before END (its sed calls)."""
    lines = pem.strip().splitlines()
    return f"{lines[0]}\\n{''.join(lines[1:-1])}\\n{lines[-1]}"


# -- parsing -------------------------------------------------------------------------------


def test_parses_pem_pasted_with_raw_newlines(pki: PKI) -> None:
    config = parse_ssl_config(_seed_style(pki), "ssl.cfg")
    assert config == load_ssl_config(pki.twoway.ssl_config, None)
    assert config.client_verify is True
    assert config.server_cert == _text(pki.twoway.server_cert)
    assert config.custom_ca == _text(pki.twoway.ca_cert)


def test_parses_the_seed_scripts_output(pki: PKI) -> None:
    text = (
        f"server_key: '{_seed_script_style(_text(pki.twoway.server_key))}'\n"
        f"server_cert: '{_seed_script_style(_text(pki.twoway.server_cert))}'\n"
        f"custom_ca: '{_seed_script_style(_text(pki.twoway.ca_cert))}'\n"
        "client_verify: true\n"
    )
    assert "\\n" in text and parse_ssl_config(text, "ssl.cfg") == parse_ssl_config(
        _seed_style(pki), "ssl.cfg"
    )


def test_parses_escapes_comments_and_any_order(pki: PKI) -> None:
    ca = _text(pki.twoway.ca_cert).replace("\n", "\\012")  # octal escape
    cert = _text(pki.twoway.server_cert).replace("\n", "\\x0a")  # hex escape
    key_lines = _text(pki.twoway.server_key).splitlines()
    # adjacent literals, one per PEM line, alternating quote styles
    key = "".join(
        f"  {quote}{line}\\n{quote}\n"
        for line, quote in zip(key_lines, itertools.cycle("'\""), strict=False)
    )
    text = (
        "# TF Serving ssl config\n"
        "client_verify: true  # a 'quote' in a comment\n"
        f'custom_ca: "{ca}",\n'
        f"server_cert: '{cert}'\n"
        f"server_key:\n{key};\n"
    )
    assert "\\012" in text and "\\x0a" in text and '"\n' in text
    assert parse_ssl_config(text, "ssl.cfg") == parse_ssl_config(_seed_style(pki), "ssl.cfg")


def test_string_escapes() -> None:
    # protobuf's own string escapes, beside a raw newline (read as \n)
    text = (
        r"""server_key: 'a\'b\"c\\d\101\x41\t\r\a\b\f\v' "x" 'y'"""
        "\nserver_cert: '\\0\\1777'  custom_ca: \"caf\\303\\251\nline\""
    )
    message = config_protos.message("SSLConfig")
    text_format.Parse(tls._with_escaped_newlines(text), message)
    assert message.server_key == "a'b\"c\\dAA\t\r\a\b\f\vxy"
    assert message.server_cert == "\x00\x7f7"
    assert message.custom_ca == "café\nline"


COLON = "line 1: expected ':' after the field name (as in server_key: \"...\")"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "foo: 'x'",
            "line 1: unknown field 'foo' (SSLConfig has server_key, server_cert, "
            "custom_ca, client_verify)",
        ),
        (
            "client_verify: true\nclient_verify: false",
            "line 2: field 'client_verify' is set more than once",
        ),
        ("client_verify: yes", "line 1: field 'client_verify' must be true or false"),
        ("\n\nserver_key: 'abc\n\n", "line 3: unterminated string"),
        ("server_key: '\\x'", "line 1: invalid string (a bad escape, or not UTF-8 text)"),
        ("server_key: '\\400'", "line 1: invalid string (a bad escape, or not UTF-8 text)"),
        ("server_key: MIIEvQIBADANBgkq", "line 1: field 'server_key' needs a quoted string"),
        ("server_key { }", COLON),
        ("client_verify true", COLON),
        ("'abc'", "line 1: expected a field name"),
        ("server_key: '\\377'", "line 1: invalid string (a bad escape, or not UTF-8 text)"),
        ("server_cert: 'x'", "server_key is missing or empty"),
        ("server_key: ''  server_cert: 'x'", "server_key is missing or empty"),
        ("server_key: 'x'", "server_cert is missing or empty"),
        (
            "server_key: 'x' server_cert: 'y' client_verify: true",
            "client_verify is true but custom_ca is empty (client certificates need a CA)",
        ),
        ("server_key: 'not a key' server_cert: 'y'", "server_key is not a PEM private key"),
    ],
)
def test_syntax_errors(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        parse_ssl_config(text, "conf/ssl.cfg")
    assert str(raised.value) == f"invalid ssl config conf/ssl.cfg: {message}"


def _config_text(key: str, cert: str, ca: str = "", verify: bool = False) -> str:
    return format_ssl_config(SSLConfig(key, cert, ca, verify))


def test_pem_errors_name_the_file_and_never_show_the_key(pki: PKI) -> None:
    key, cert = _text(pki.twoway.server_key), _text(pki.twoway.server_cert)
    other_key = _text(pki.other.server_key)
    body = key.splitlines()[1]
    encrypted = (
        serialization.load_pem_private_key(key.encode(), None)
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
        .decode()
    )
    weak = (
        rsa.generate_private_key(public_exponent=65537, key_size=1024)
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    cases = {
        _config_text(other_key, cert): "server_key does not match server_cert (the "
        "certificate is for another key)",
        _config_text(key, key): "server_cert is not PEM certificate text",
        _config_text(key, cert, "garbage", True): "custom_ca is not PEM certificate text",
        _config_text(encrypted, cert): "server_key is an encrypted private key; the ssl config "
        "needs it unencrypted (protect the whole file instead: encrypt it and give "
        "--ssl_config_key)",
        _config_text(weak, cert): "server_key is a 1024-bit RSA key; use at least 2048 bits",
        _config_text(key[:-40], cert): "server_key is not a PEM private key",
    }
    for text, message in cases.items():
        with pytest.raises(InvalidArgument) as raised:
            parse_ssl_config(text, "/etc/ssl.cfg")
        assert str(raised.value) == f"invalid ssl config /etc/ssl.cfg: {message}"
        assert body not in str(raised.value) and raised.value.__cause__ is None


def test_keys_never_in_repr(pki: PKI) -> None:
    config = load_ssl_config(pki.twoway.ssl_config, None)
    body = config.server_key.splitlines()[1]
    for shown in (repr(config), str(config), f"{config!r}", str([config])):
        assert body not in shown and "PRIVATE KEY" not in shown
    assert repr(config) == (
        "SSLConfig(server_key=<redacted>, server_cert=<1 certificate(s)>, "
        "custom_ca=<1 certificate(s)>, client_verify=True)"
    )


def test_format_round_trips_and_protobuf_reads_it(pki: PKI) -> None:
    """`format_ssl_config` writes what protobuf's own text parser (TF Serving's) accepts,
    and our parser reads what protobuf writes."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

    proto = descriptor_pb2.FileDescriptorProto(
        name="sealserve_test_ssl_config.proto", package="tensorflow.serving", syntax="proto3"
    )
    message = proto.message_type.add(name="SSLConfig")
    field = descriptor_pb2.FieldDescriptorProto
    for number, name in enumerate(("server_key", "server_cert", "custom_ca"), start=1):
        message.field.add(name=name, number=number, type=field.TYPE_STRING)
    message.field.add(name="client_verify", number=4, type=field.TYPE_BOOL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    message_class = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tensorflow.serving.SSLConfig")
    )

    for ssl_config in (pki.twoway.ssl_config, pki.oneway.ssl_config):
        config = load_ssl_config(ssl_config, None)
        text = format_ssl_config(config, comment="a comment\non two lines")
        assert parse_ssl_config(text, "x") == config
        parsed = text_format.Parse(text, message_class())
        assert (parsed.server_key, parsed.server_cert, parsed.custom_ca) == (
            config.server_key,
            config.server_cert,
            config.custom_ca,
        )
        assert parsed.client_verify is config.client_verify
        written = text_format.MessageToString(parsed)
        assert parse_ssl_config(written, "x") == config


# -- the file ------------------------------------------------------------------------------


def test_load_encrypted_ssl_config(pki: PKI) -> None:
    path = pki.encrypted.ssl_config
    assert path.read_bytes().startswith(FILE_ID)
    config = load_ssl_config(path, WRAP_KEY)
    assert config.server_cert == _text(pki.encrypted.server_cert)
    assert config.client_verify is False

    with pytest.raises(InvalidArgument) as raised:
        load_ssl_config(path, None)
    assert str(raised.value) == (
        f"ssl config {path} is encrypted (a Gramine protected file); "
        "give its wrap key with --ssl_config_key"
    )
    with pytest.raises(DataLoss):
        load_ssl_config(path, bytes(16))


def test_load_file_errors_and_warnings(
    pki: PKI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(NotFound, match="^ssl config file .*missing.cfg not found$"):
        load_ssl_config(tmp_path / "missing.cfg", None)
    with pytest.raises(InvalidArgument, match="is a directory$"):
        load_ssl_config(tmp_path, None)
    (tmp_path / "latin1.cfg").write_bytes(b"# caf\xe9\n")
    with pytest.raises(InvalidArgument) as raised:
        load_ssl_config(tmp_path / "latin1.cfg", None)
    assert str(raised.value) == f"invalid ssl config {tmp_path / 'latin1.cfg'}: not UTF-8 text"

    readable = tmp_path / "readable.cfg"
    readable.write_text(pki.twoway.ssl_config.read_text())
    readable.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="sealserve.serving.tls"):
        load_ssl_config(readable, None)
    assert "accessible to other users (mode 644)" in caplog.text


# -- contexts ------------------------------------------------------------------------------


def test_server_context_settings(pki: PKI) -> None:
    mutual = server_ssl_context(load_ssl_config(pki.twoway.ssl_config, None))
    assert mutual.minimum_version == ssl.TLSVersion.TLSv1_2
    assert mutual.verify_mode == ssl.CERT_REQUIRED
    assert mutual.cert_store_stats()["x509_ca"] == 1
    assert all(
        cipher["protocol"] == "TLSv1.3" or "ECDHE" in cipher["name"]
        for cipher in mutual.get_ciphers()
    )
    oneway = server_ssl_context(load_ssl_config(pki.oneway.ssl_config, None))
    assert oneway.verify_mode == ssl.CERT_NONE


def test_context_without_memfd_uses_an_encrypted_temporary_file(
    pki: PKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[str] = []
    real_mkdtemp = tls.tempfile.mkdtemp

    def mkdtemp(**kwargs: str) -> str:
        made.append(real_mkdtemp(**kwargs))
        return made[-1]

    monkeypatch.setattr(tls, "_memfd", lambda: None)
    monkeypatch.setattr(tls.tempfile, "mkdtemp", mkdtemp)
    config = load_ssl_config(pki.oneway.ssl_config, None)
    context = server_ssl_context(config)
    assert context.verify_mode == ssl.CERT_NONE
    assert len(made) == 1 and not Path(made[0]).exists()
    asyncio.run(_expect_success(config, _client(pki.oneway.server_cert), None))


def test_the_key_is_loaded_from_memory(pki: PKI, monkeypatch: pytest.MonkeyPatch) -> None:
    paths: list[str] = []
    real = ssl.SSLContext.load_cert_chain

    def spy(self: ssl.SSLContext, certfile: str, *args: object, **kwargs: object) -> None:
        paths.append(certfile)
        real(self, certfile, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ssl.SSLContext, "load_cert_chain", spy)
    server_ssl_context(load_ssl_config(pki.oneway.ssl_config, None))
    assert len(paths) == 1 and paths[0].startswith("/proc/self/fd/")


# -- handshakes ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Ports:
    rest: int
    grpc: int


@contextlib.asynccontextmanager
async def _servers(config: SSLConfig) -> AsyncIterator[Ports]:
    """The REST and gRPC servers of one config on free loopback ports."""

    async def ping(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/v1/ping", ping)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ssl_context(config))
    await site.start()
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    grpc_port = server.add_secure_port("127.0.0.1:0", grpc_server_credentials(config))
    await server.start()
    try:
        yield Ports(rest=runner.addresses[0][1], grpc=grpc_port)
    finally:
        await server.stop(None)
        await runner.cleanup()


@dataclass(frozen=True)
class Client:
    """What a client trusts and (optionally) presents."""

    root: Path
    cert: Path | None = None
    key: Path | None = None

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cadata=self.root.read_text())
        # what Python ≥ 3.13 clients do by default: the certificates must pass it too
        context.verify_flags |= ssl.VERIFY_X509_STRICT
        if self.cert and self.key:
            context.load_cert_chain(self.cert, self.key)
        return context

    def grpc_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.root.read_bytes(),
            private_key=self.key.read_bytes() if self.key else None,
            certificate_chain=self.cert.read_bytes() if self.cert else None,
        )


def _client(root: Path | None, cert: Path | None = None, key: Path | None = None) -> Client:
    assert root is not None
    return Client(root, cert, key)


async def _rest(port: int, client: Client, host: str = "localhost") -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"https://{host}:{port}/v1/ping", ssl=client.ssl_context()) as response,
    ):
        return response.status


async def _grpc(port: int, client: Client, host: str = "localhost", override: str = "") -> str:
    options = [("grpc.ssl_target_name_override", override)] if override else []
    async with grpc.aio.secure_channel(
        f"{host}:{port}", client.grpc_credentials(), options=options
    ) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


async def _expect_success(config: SSLConfig, client: Client, hosts: tuple[str, ...] | None) -> None:
    async with _servers(config) as ports:
        for host in hosts or ("localhost",):
            assert await _rest(ports.rest, client, host) == 200
            assert await _grpc(ports.grpc, client, host) == "SERVING"


async def _expect_refused(config: SSLConfig, client: Client) -> None:
    async with _servers(config) as ports:
        with pytest.raises(aiohttp.ClientError):
            await _rest(ports.rest, client)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await _grpc(ports.grpc, client)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_with_hostname_checks(pki: PKI) -> None:
    config = load_ssl_config(pki.twoway.ssl_config, None)
    client = _client(pki.twoway.ca_cert, pki.twoway.client_cert, pki.twoway.client_key)
    # DNS name SAN and IP address SAN, both checked by the clients
    asyncio.run(_expect_success(config, client, ("localhost", "127.0.0.1")))


def test_mutual_tls_refuses_a_client_without_certificate(pki: PKI) -> None:
    config = load_ssl_config(pki.twoway.ssl_config, None)
    asyncio.run(_expect_refused(config, _client(pki.twoway.ca_cert)))


def test_mutual_tls_refuses_a_certificate_of_another_ca(pki: PKI) -> None:
    config = load_ssl_config(pki.twoway.ssl_config, None)
    intruder = _client(pki.twoway.ca_cert, pki.other.client_cert, pki.other.client_key)
    asyncio.run(_expect_refused(config, intruder))


def test_mutual_tls_refuses_a_server_certificate_as_client_certificate(pki: PKI) -> None:
    # signed by the right CA but for serverAuth only: the extendedKeyUsage is checked
    config = load_ssl_config(pki.twoway.ssl_config, None)
    client = _client(pki.twoway.ca_cert, pki.twoway.server_cert, pki.twoway.server_key)
    asyncio.run(_expect_refused(config, client))


def test_oneway_tls_clients_trust_the_server_certificate(pki: PKI) -> None:
    config = load_ssl_config(pki.oneway.ssl_config, None)
    client = _client(pki.oneway.server_cert)  # the seed's `-crt server/cert.pem`
    asyncio.run(_expect_success(config, client, ("localhost", "127.0.0.1")))
    # a client certificate is neither requested nor in the way
    with_cert = _client(pki.oneway.server_cert, pki.other.client_cert, pki.other.client_key)
    asyncio.run(_expect_success(config, with_cert, None))


def test_clients_refuse_an_untrusted_server_or_a_wrong_name(pki: PKI) -> None:
    config = load_ssl_config(pki.oneway.ssl_config, None)

    async def scenario() -> None:
        async with _servers(config) as ports:
            stranger = _client(pki.other.ca_cert)
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await _rest(ports.rest, stranger)
            with pytest.raises(grpc.aio.AioRpcError):
                await _grpc(ports.grpc, stranger)

            trusting = _client(pki.oneway.server_cert)

            def connect_as_wrong_name() -> None:
                context = trusting.ssl_context()
                with socket.create_connection(("127.0.0.1", ports.rest), timeout=10) as raw:
                    context.wrap_socket(raw, server_hostname="wrong.example").close()

            with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
                await asyncio.to_thread(connect_as_wrong_name)
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await _grpc(ports.grpc, trusting, override="wrong.example")
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE

    asyncio.run(scenario())


def _handshake(port: int, version: ssl.TLSVersion) -> str:
    """A bare handshake at exactly `version`; returns the version negotiated."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = context.maximum_version = version
    context.set_ciphers("ALL:@SECLEVEL=0")  # OpenSSL 3 only offers TLS < 1.2 at level 0
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw) as tls_socket,
    ):
        return str(tls_socket.version())


@contextlib.contextmanager
def _permissive_server(pki: PKI) -> Iterator[int]:
    """A control server that accepts TLS 1.0+, to prove the client can speak TLS 1.1."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.set_ciphers("ALL:@SECLEVEL=0")
    context.load_cert_chain(pki.oneway.server_cert, pki.oneway.server_key)
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with contextlib.suppress(OSError):
            connection, _ = listener.accept()
            with contextlib.suppress(OSError), context.wrap_socket(connection, server_side=True):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
        thread.join(timeout=10)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_tls_below_1_2_is_refused_on_both_ports(pki: PKI) -> None:
    try:
        with _permissive_server(pki) as control:
            assert _handshake(control, ssl.TLSVersion.TLSv1_1) == "TLSv1.1"
    except (ssl.SSLError, OSError) as error:
        pytest.skip(f"this OpenSSL cannot negotiate TLS 1.1 at all: {error}")

    config = load_ssl_config(pki.oneway.ssl_config, None)

    async def scenario() -> None:
        async with _servers(config) as ports:
            for port in (ports.rest, ports.grpc):
                for old in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
                    with pytest.raises((ssl.SSLError, ConnectionError)):
                        await asyncio.to_thread(_handshake, port, old)
                for modern in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
                    negotiated = await asyncio.to_thread(_handshake, port, modern)
                    assert negotiated == {"TLSv1_2": "TLSv1.2", "TLSv1_3": "TLSv1.3"}[modern.name]

    asyncio.run(scenario())


def test_encrypted_ssl_config_serves(pki: PKI) -> None:
    config = load_ssl_config(pki.encrypted.ssl_config, WRAP_KEY)
    asyncio.run(_expect_success(config, _client(pki.encrypted.server_cert), None))


# -- #12 §3: a protected ssl.cfg the host swaps -------------------------------------------


def test_a_protected_ssl_config_opens_only_at_its_bound_path(pki: PKI, tmp_path: Path) -> None:
    """Another protected file under the same key (made for another path) is refused."""
    elsewhere = tmp_path / "deployed" / "ssl.cfg"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(pki.encrypted.ssl_config.read_bytes())
    with pytest.raises(BoundPathMismatch) as raised:
        load_ssl_config(elsewhere, WRAP_KEY)
    assert str(raised.value).startswith(
        f"ssl config {elsewhere} was encrypted for '{pki.encrypted.ssl_config}', not for this path"
    )
    # made for the path it is deployed at (sealserve certs --ssl-cfg-bound-path): accepted,
    # also when the server is given a relative path to it
    made = make_oneway(
        "localhost",
        tmp_path / "made",
        encrypt_ssl_cfg_key=WRAP_KEY,
        ssl_cfg_bound_path=str(elsewhere),
    )
    elsewhere.write_bytes(made.ssl_config.read_bytes())
    assert load_ssl_config(elsewhere, WRAP_KEY).client_verify is False
    relative = os.path.relpath(elsewhere)
    assert load_ssl_config(relative, WRAP_KEY).client_verify is False


def test_an_older_one_way_ssl_config_cannot_turn_mutual_tls_off(pki: PKI, tmp_path: Path) -> None:
    """Same key, same path, client_verify false: refused when client certificates are
    required (the measured --require_client_cert)."""
    path = tmp_path / "ssl.cfg"
    older = make_oneway(
        "localhost", tmp_path / "older", encrypt_ssl_cfg_key=WRAP_KEY, ssl_cfg_bound_path=str(path)
    )
    path.write_bytes(older.ssl_config.read_bytes())
    assert load_ssl_config(path, WRAP_KEY).client_verify is False  # not required: served
    with pytest.raises(PermissionDenied) as raised:
        load_ssl_config(path, WRAP_KEY, require_client_verify=True)
    assert str(raised.value) == (
        f"ssl config {path} does not require client certificates (client_verify is false), "
        "but --require_client_cert is set: refusing to serve without mutual TLS"
    )
    assert load_ssl_config(pki.twoway.ssl_config, None, require_client_verify=True).client_verify


def test_an_attested_server_takes_no_plain_ssl_config(pki: PKI) -> None:
    """A plain ssl.cfg's key and CA are whoever wrote the file: the host."""
    with pytest.raises(FailedPrecondition, match="is a plain file, so its key and CA are"):
        load_ssl_config(pki.twoway.ssl_config, None, require_protected=True)
    assert load_ssl_config(pki.encrypted.ssl_config, WRAP_KEY, require_protected=True)
