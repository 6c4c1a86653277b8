"""The `sealserve` command: parses arguments, wires the parts, prints errors.

Flags of the file commands mirror `gramine-sgx-pf-crypt` (`-w`, `-i`, `-o`, `-V`) so that a
user of the seed can swap the command. Every error a user can cause is one line on stderr and
a non-zero exit; `--debug` shows the traceback. Output cut by a closed pipe (`sealserve ... |
head`) is not an error we report: no message, exit 141 as a tool killed by SIGPIPE. Nothing
imports this module.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sealserve import __version__
from sealserve.errors import FailedPrecondition, InvalidArgument, NotFound, SealserveError
from sealserve.serving.grpc_delivery import SEND_TIMEOUT_SECONDS  # no grpc, no TensorFlow
from sealserve.serving.request_budget import BudgetOptions  # no TensorFlow: a dataclass

if TYPE_CHECKING:
    from sealserve.serving.attested_identity import AttestedIdentity, BrokeredIdentity
    from sealserve.serving.keys import KeyProvider
    from sealserve.serving.model_config import ModelConfig, ModelTrust
    from sealserve.serving.model_management import ModelManagementPolicy
    from sealserve.serving.server import ServerOptions
    from sealserve.serving.tls import SSLConfig
    from sealserve.tools.certs import CertificateSet

log = logging.getLogger("sealserve")

EXIT_ERROR = 1
EXIT_MODELS_UNAVAILABLE = 3  # `serve`: a model's initial load failed (docs/serving.md)
EXIT_INTERRUPTED = 130
# stdout's reader went away (`sealserve ... | head`): what a Unix tool killed by SIGPIPE reports
# (128 + 13), so `set -o pipefail` scripts see exactly what they see from `cat` or `grep`.
EXIT_BROKEN_PIPE = 141


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="sealserve: %(levelname)s: %(message)s",
    )
    if not hasattr(args, "run"):
        parser.print_help(sys.stderr)
        return 2
    try:
        code = args.run(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit flush
    except SealserveError as exc:
        return _fail(args, str(exc))
    except OSError as exc:
        if isinstance(exc, BrokenPipeError) and _stdout_reader_gone():
            return _quiet_broken_pipe()
        where = f": {exc.filename}" if exc.filename else ""
        return _fail(args, f"{exc.strerror or exc}{where}")
    except KeyboardInterrupt:
        print("sealserve: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug: say so in one line unless debugging
        if args.debug:
            raise
        print(
            f"sealserve: internal error: {type(exc).__name__}: {exc} "
            "(run with --debug for details)",
            file=sys.stderr,
        )
        return EXIT_ERROR
    return code if isinstance(code, int) else 0


def _stdout_reader_gone() -> bool:
    """True when stdout is a pipe whose reader has closed it (poll reports POLLERR), so a
    BrokenPipeError from a socket (a key broker hanging up) is still reported as an error."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), 0)  # POLLERR is always reported
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError):  # stdout closed or not a real file
        return False


def _quiet_broken_pipe() -> int:
    """Exit like a Unix tool whose reader went away: no message. Point stdout at /dev/null so
    the interpreter's final flush of what is still buffered cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_BROKEN_PIPE


def _fail(args: argparse.Namespace, message: str) -> int:
    if args.debug:
        log.exception("traceback")
    print(f"sealserve: error: {message}", file=sys.stderr)
    return EXIT_ERROR


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sealserve",
        description="Confidential TensorFlow Serving: encrypted SavedModels, decrypted in "
        "memory only, served through TF Serving's REST and gRPC APIs.",
    )
    parser.add_argument("--version", action="version", version=f"sealserve {__version__}")
    parser.add_argument("--debug", action="store_true", help="log details and show tracebacks")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    keygen = commands.add_parser("keygen", help="generate a 16-byte wrap key (mode 0600)")
    keygen.add_argument("-w", "--wrap-key", required=True, metavar="PATH", help="key file to write")
    keygen.add_argument("--force", action="store_true", help="replace an existing key file")
    keygen.set_defaults(run=_keygen)

    encrypt = commands.add_parser(
        "encrypt", help="encrypt a file or a whole model directory into Gramine protected files"
    )
    _add_io(encrypt, "plaintext file or directory", "output path, bound into every file")
    encrypt.add_argument(
        "--format-version",
        type=int,
        choices=(1, 2),
        default=2,
        help="2 for Gramine >= 1.9 (default), 1 for Gramine <= 1.8",
    )
    encrypt.add_argument(
        "--bind-to",
        metavar="PATH",
        help="(a directory) bind the tree to PATH, where the server will load it from, "
        "e.g. /models/NAME/VERSION, instead of the output path; a server refuses a tree "
        "bound elsewhere",
    )
    encrypt.add_argument(
        "--model-id",
        metavar="ID",
        help="(a directory) the manifest's model id (default: a new one); give every "
        "version of a model the same id to pin it with `serve --model_pin`",
    )
    encrypt.set_defaults(run=_encrypt)

    decrypt = commands.add_parser("decrypt", help="decrypt a protected file or model tree")
    _add_io(decrypt, "protected file or tree", "plaintext output (mode 0600)")
    decrypt.add_argument(
        "-V",
        "--verify-path",
        nargs="?",
        const="",
        default=None,
        metavar="PATH",
        help="check the path bound into the file(s): PATH, or the -i path when PATH is omitted "
        "(as gramine-sgx-pf-crypt -V)",
    )
    decrypt.set_defaults(run=_decrypt)

    rekey = commands.add_parser(
        "rekey",
        help="rotate the wrap key (rewrites only each file's metadata node)",
        description="Rotate the wrap key. Only the metadata node each file's wrap key protects "
        "is rewritten, so this takes milliseconds; the per-node keys stay, so someone who had "
        "the old key and a copy of the files can still read them: use --reencrypt for that.",
    )
    rekey.add_argument("-w", "--wrap-key", required=True, metavar="OLD_KEY", help="current key")
    rekey.add_argument("--new-key", required=True, metavar="NEW_KEY", help="new key file")
    rekey.add_argument("-i", "--input", required=True, metavar="IN", help="protected file or tree")
    rekey.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT",
        help="output path (for a file, the input itself rekeys it in place)",
    )
    rekey.add_argument(
        "--reencrypt", action="store_true", help="re-encrypt every node with fresh keys instead"
    )
    rekey.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    rekey.set_defaults(run=_rekey)

    verify = commands.add_parser("verify", help="check a whole encrypted model tree")
    verify.add_argument("-w", "--wrap-key", required=True, metavar="KEY")
    verify.add_argument("path", metavar="DIR", help="protected model tree (or a single file)")
    verify.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    verify.set_defaults(run=_verify)

    _add_serve(commands)
    _add_requester_tools(commands)
    _add_attestation_tools(commands)

    certs = commands.add_parser("certs", help="make TLS keys, certificates and ssl.cfg")
    cert_commands = certs.add_subparsers(title="certificate commands", metavar="COMMAND")
    twoway = cert_commands.add_parser("twoway", help="a CA, server and client (mutual TLS)")
    twoway.add_argument("server_name", help="the server's DNS name or IP address")
    twoway.add_argument("client_name", help="the client's name (DNS name or IP address)")
    oneway = cert_commands.add_parser("oneway", help="a self-signed server certificate")
    oneway.add_argument("server_name", help="the server's DNS name or IP address")
    for command, run in ((twoway, _certs_twoway), (oneway, _certs_oneway)):
        command.add_argument(
            "-o",
            "--output",
            required=True,
            metavar="DIR",
            help="directory to create (the seed's ssl_configure/ layout)",
        )
        command.add_argument(
            "--san",
            action="append",
            default=[],
            metavar="NAME",
            help="another DNS name or IP address of the server (repeatable)",
        )
        command.add_argument(
            "--rsa", type=int, metavar="BITS", help="RSA keys of BITS bits instead of ECDSA P-256"
        )
        command.add_argument("--days", type=int, default=365, help="leaf validity in days")
        command.add_argument(
            "--encrypt-ssl-cfg",
            metavar="KEY",
            help="write ssl.cfg as a protected file under this wrap key",
        )
        command.add_argument(
            "--ssl-cfg-bound-path",
            metavar="PATH",
            help="with --encrypt-ssl-cfg: the path the server will read ssl.cfg from (bound "
            "into the file; default: where it is written)",
        )
        command.set_defaults(run=run)

    models = commands.add_parser("models", help="generate test and demo models")
    model_commands = models.add_subparsers(title="model commands", metavar="COMMAND")
    make = model_commands.add_parser("make", help="write a generated SavedModel")
    make.add_argument("name", choices=_model_names(), help="which model")
    make.add_argument("directory", metavar="DIR", help="SavedModel directory to create")
    make.set_defaults(run=_models_make)
    from sealserve.tools import convert

    converter = model_commands.add_parser(
        "convert", help="turn a frozen GraphDef into a SavedModel (the seed's converter)"
    )
    convert.add_arguments(converter)
    converter.set_defaults(run=convert.run)
    return parser


def _add_io(parser: argparse.ArgumentParser, input_help: str, output_help: str) -> None:
    parser.add_argument("-w", "--wrap-key", required=True, metavar="KEY", help="wrap key file")
    parser.add_argument("-i", "--input", required=True, metavar="IN", help=input_help)
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help=output_help)
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _model_names() -> list[str]:
    from sealserve.tools.models import MODEL_NAMES

    return list(MODEL_NAMES)


def _add_attestation_tools(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from sealserve.attestation import cli as attest_cli
    from sealserve.kbs import cli as kbs_cli

    attest_cli.add_sim_arguments(
        commands.add_parser("sim", help="a simulated TEE for machines without one")
    )
    attest_cli.add_attest_arguments(
        commands.add_parser("attest", help="produce or verify TEE evidence (DCAP quotes)")
    )
    kbs = commands.add_parser("kbs", help="the key broker: serve, secrets, policies, audit")
    kbs_cli.add_arguments(kbs)
    kbs.set_defaults(run=kbs_cli.run)


def _add_requester_tools(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from sealserve.client import benchmark, predict

    client = commands.add_parser(
        "client",
        allow_abbrev=False,
        help="benchmark a TF Serving model over gRPC or REST (the seed's resnet_client_grpc)",
    )
    benchmark.add_arguments(client)
    client.set_defaults(run=benchmark.run)
    one = commands.add_parser("predict", help="send one prediction request and print the answer")
    predict.add_arguments(one)
    one.set_defaults(run=predict.run)


def _flag_bool(text: str) -> bool:
    """TF Serving's boolean flags: --flag, --flag=true, --flag=false (also 1/0)."""
    value = text.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _add_serve(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    serve = commands.add_parser(
        "serve",
        help="serve (encrypted) SavedModels through TF Serving's REST and gRPC APIs",
        description="A drop-in for tensorflow_model_server: the same flags, names and "
        "defaults; protected models are decrypted in memory only.",
    )
    _add_serve_flags(serve)
    serve.set_defaults(run=_serve)
    measure = commands.add_parser(
        "measure",
        help="print the simulated mr_enclave of `sealserve serve` with these flags",
        description="The simulated TEE's measurement covers the installed code and the serve "
        "flags, so give exactly the flags the server will run with.",
    )
    _add_serve_flags(measure)
    measure.set_defaults(run=_measure)


def _positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0")
    return seconds


def _grpc_channel_arguments(text: str) -> tuple[tuple[str, int | str], ...]:
    """TF Serving's --grpc_channel_arguments: "key=value,..."; integers as integers."""
    arguments: list[tuple[str, int | str]] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, equals, value = item.partition("=")
        if not equals or not key.strip():
            raise argparse.ArgumentTypeError(f"{item!r} is not KEY=VALUE")
        try:
            number = int(value)
        except ValueError:
            arguments.append((key.strip(), value))
            continue
        arguments.append((key.strip(), number if -(2**31) <= number < 2**31 else value))
    return tuple(arguments)


def _port_or_off(text: str) -> int | None:
    """A port for a listener: a number, 0 for any free one, or `off` (None) for none."""
    if text.strip().lower() == "off":
        return None
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a port: give 1-65535, 0 for any free port, or off"
        )
    return port


def _add_serve_flags(serve: argparse.ArgumentParser) -> None:
    tf = serve.add_argument_group("TensorFlow Serving flags")
    tf.add_argument("--port", type=int, default=8500, help="gRPC port (default 8500)")
    tf.add_argument(
        "--rest_api_port",
        type=_port_or_off,
        default=None,
        help="REST port; 0: any free port, as for --port (the start-up line says which); "
        "off (the default): no REST API. Unlike TF Serving, 0 does not mean off",
    )
    tf.add_argument("--rest_api_timeout_in_ms", type=int, default=30000)
    tf.add_argument("--model_name", default="default", help="name of the single model")
    tf.add_argument("--model_base_path", help="base path of the single model")
    tf.add_argument("--model_config_file", help="ModelServerConfig text proto (several models)")
    tf.add_argument(
        "--model_config_file_poll_wait_seconds",
        type=int,
        default=0,
        help="seconds between re-reads of --model_config_file (0: never)",
    )
    tf.add_argument(
        "--file_system_poll_wait_seconds",
        type=float,
        default=1,
        help="seconds between scans for new versions (0: once at start-up)",
    )
    tf.add_argument("--ssl_config_file", help="SSLConfig text proto: TLS for gRPC and REST")
    tf.add_argument("--saved_model_tags", default="serve", help="comma-separated tags")
    tf.add_argument("--tensorflow_intra_op_parallelism", type=int, default=0)
    tf.add_argument("--tensorflow_inter_op_parallelism", type=int, default=0)
    tf.add_argument("--max_num_load_retries", type=int, default=5)
    tf.add_argument("--load_retry_interval_micros", type=int, default=60_000_000)
    tf.add_argument("--num_load_threads", type=int, default=2)
    tf.add_argument(
        "--grpc_max_threads",
        type=int,
        default=0,
        help="threads handling gRPC calls (default 0: one per CPU, plus two batches' worth, "
        "up to 64, with --enable_batching)",
    )
    tf.add_argument(
        "--grpc_channel_arguments",
        type=_grpc_channel_arguments,
        default=(),
        metavar="KEY=VALUE,...",
        help="arguments for the gRPC server, comma-separated, as TF Serving takes them (e.g. "
        "grpc.max_connection_age_ms=2000): a value that is a 32-bit integer is passed as one",
    )
    for name, default, text in (
        ("--enable_model_warmup", True, "replay assets.extra/tf_serving_warmup_requests"),
        ("--enable_grpc_healthcheck_service", False, "serve grpc.health.v1"),
        ("--enable_batching", False, "merge concurrent Predict requests into batches"),
        (
            "--allow_version_labels_for_unavailable_models",
            False,
            "let a reloaded config point a new version label at a version not loaded yet",
        ),
    ):
        tf.add_argument(
            name,
            type=_flag_bool,
            nargs="?",
            const=True,
            default=default,
            metavar="BOOL",
            help=f"{text} (default {str(default).lower()})",
        )
    tf.add_argument(
        "--batching_parameters_file", help="BatchingParameters text proto (max_batch_size, ...)"
    )
    tf.add_argument(
        "--monitoring_config_file",
        help='MonitoringConfig text proto: prometheus_config { enable: true path: "..." } '
        "serves Prometheus metrics on the REST port",
    )

    own = serve.add_argument_group("sealserve flags")
    own.add_argument(
        "--model_key",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="wrap key of model NAME (repeatable)",
    )
    own.add_argument(
        "--model_pin",
        action="append",
        default=[],
        metavar="NAME=MODEL_ID[:MIN_VERSION]",
        help="serve model NAME only from trees with this manifest model id (* for any) and "
        "versions >= MIN_VERSION (refuses rollbacks; repeatable)",
    )
    own.add_argument(
        "--insecure_plain_model",
        action="append",
        default=[],
        metavar="NAME",
        help="with --key_broker: serve model NAME from plain, unauthenticated SavedModels "
        "(every other model needs a key; repeatable)",
    )
    own.add_argument(
        "--ssl_config_key",
        metavar="NAME",
        help="--model_key entry that decrypts a protected --ssl_config_file "
        "(default: the only one given)",
    )
    own.add_argument(
        "--require_client_cert",
        type=_flag_bool,
        nargs="?",
        const=True,
        default=False,
        metavar="BOOL",
        help="refuse to start unless --ssl_config_file has client_verify: true (measured, "
        "so a swapped one-way ssl.cfg cannot turn mutual TLS off)",
    )
    own.add_argument(
        "--admin_client_cert_sha256",
        action="append",
        default=[],
        metavar="HEX",
        help="SHA-256 fingerprint of a client certificate allowed to call "
        "HandleReloadConfigRequest (repeatable; default: nobody may)",
    )
    own.add_argument(
        "--admin_client_ca",
        metavar="PEM",
        help="CA whose client certificates may call HandleReloadConfigRequest (measured; "
        "also trusted in the mTLS handshake)",
    )
    own.add_argument(
        "--admin_base_path_root",
        metavar="DIR",
        help="absolute directory that every base_path of a reload must lie under",
    )
    own.add_argument("--bind_address", default="0.0.0.0", help="address to listen on")
    own.add_argument(
        "--allow_unavailable_models",
        type=_flag_bool,
        nargs="?",
        const=True,
        default=False,
        metavar="BOOL",
        help="start even if some models fail their initial load (their status says why; the "
        "base paths are still polled); by default such a start exits with code "
        f"{EXIT_MODELS_UNAVAILABLE}, as tensorflow_model_server fails (default false)",
    )
    own.add_argument(
        "--log_level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="the server's own log lines shown on stderr: info (default) shows its lifecycle "
        "(loading, available, serving, unloading, shutting down); warning only problems",
    )
    own.add_argument(
        "--runtime",
        default="tensorflow",
        metavar="RUNTIME",
        help="what runs the single model: tensorflow (default) or openvino[:OPTIONS], e.g. "
        "openvino:bf16 (options in docs/openvino.md; with --model_config_file use each "
        "model's model_platform)",
    )
    own.add_argument(
        "--rest_api_max_body_bytes",
        type=int,
        default=100 << 20,
        help="cap on a request body, after gzip decompression",
    )
    own.add_argument("--rest_api_max_json_depth", type=int, default=100)
    own.add_argument("--grpc_max_message_bytes", type=int, default=256 << 20)
    own.add_argument(
        "--grpc_max_concurrent_rpcs",
        type=int,
        default=1024,
        help="gRPC calls in progress or queued at once; more are refused with "
        "RESOURCE_EXHAUSTED (default 1024)",
    )
    own.add_argument(
        "--grpc_send_timeout_seconds",
        type=_positive_seconds,
        default=SEND_TIMEOUT_SECONDS,
        help="drop a large gRPC answer its client has not taken this long after it was ready "
        "(the call ends CANCELLED), and close a connection that answers no keepalive ping "
        "within as long",
    )
    own.add_argument(
        "--max_request_bytes",
        type=int,
        default=BudgetOptions.max_request_bytes,
        help="a gRPC request's bytes, received and decoded, at most (RESOURCE_EXHAUSTED beyond)",
    )
    own.add_argument(
        "--max_in_flight_request_bytes",
        type=int,
        default=BudgetOptions.max_in_flight_bytes,
        help="bytes of gRPC and REST requests and responses held at once, server-wide; a "
        "request beyond is refused with RESOURCE_EXHAUSTED, HTTP 429 (clients retry)",
    )
    own.add_argument(
        "--rest_api_idle_timeout_seconds",
        type=float,
        default=30.0,
        help="close a REST connection that sends no complete request headers for this long",
    )
    own.add_argument(
        "--inference_threads",
        type=int,
        default=8,
        help="threads running requests (TensorFlow releases the GIL)",
    )
    broker = serve.add_argument_group("attested key release")
    broker.add_argument(
        "--key_broker", metavar="URL", help="KBS that releases model keys after attestation"
    )
    broker.add_argument("--key_broker_ca", metavar="PEM", help="CA of the KBS's certificate")
    broker.add_argument(
        "--attestation",
        choices=("sim", "gramine", "tsm", "coco"),
        help="how this server proves what it runs (coco: the Confidential Containers "
        "Attestation Agent of the pod's TD)",
    )
    broker.add_argument("--sim_dir", metavar="DIR", help="the simulated TEE (--attestation sim)")
    broker.add_argument(
        "--attested_tls",
        action="store_true",
        help="serve both ports with a TLS key made in memory at start and a certificate "
        "carrying this TEE's evidence for it (RA-TLS), which requesters verify before sending "
        "anything (`sealserve predict --verify-server`); --ssl_config_file then only sets "
        "client verification (custom_ca, client_verify)",
    )
    broker.add_argument(
        "--key_broker_tls_name",
        metavar="NAME",
        help="serve both ports with a TLS key made in memory and a certificate the key broker "
        "issues for NAME over this server's attested session (its policy for "
        "sealserve/tls-cert/NAME decides), carrying the verified claims; renewed before it "
        "expires. Requesters verify it with `--verify-server POLICY --server-ca KBS_CA`",
    )


# -- commands ----------------------------------------------------------------------------


def _keygen(args: argparse.Namespace) -> None:
    from sealserve.keyfile import generate_wrap_key_file

    generate_wrap_key_file(args.wrap_key, force=args.force)
    print(f"wrote a new wrap key to {args.wrap_key} (mode 0600)")


def _encrypt(args: argparse.Namespace) -> None:
    from sealserve import model_tree
    from sealserve.keyfile import read_wrap_key

    key = read_wrap_key(args.wrap_key)
    source = _existing(args.input)
    if source.is_dir():
        with _progress(args, _tree_size(source), "encrypt") as progress:
            manifest = model_tree.encrypt_tree(
                source,
                args.output,
                key,
                version=args.format_version,
                model_id=args.model_id,
                bound_root=args.bind_to,
                progress=progress,
            )
        print(
            f"encrypted {len(manifest.files)} files ({manifest.total_size} bytes) into "
            f"{args.output}, model id {manifest.model_id}"
        )
        print(
            f"(Gramine's encrypted files must be mounted at this exact path: "
            f'"{manifest.bound_root}")'
        )
    else:
        if args.bind_to or args.model_id:
            raise InvalidArgument("--bind-to and --model-id apply to directories only")
        with _progress(args, source.stat().st_size, "encrypt") as progress:
            bound = model_tree.encrypt_file(
                source, args.output, key, version=args.format_version, progress=progress
            )
        print(f"encrypted {source} into {args.output}")
        print(
            f"(Gramine's encrypted files must contain this exact path: "
            f'"{bound.decode("utf-8", "backslashreplace")}")'
        )


def _decrypt(args: argparse.Namespace) -> None:
    from sealserve import model_tree
    from sealserve.keyfile import read_wrap_key

    key = read_wrap_key(args.wrap_key)
    source = _existing(args.input)
    expected = None
    if args.verify_path is not None:
        expected = args.verify_path or args.input
    if source.is_dir():
        tree = model_tree.ProtectedTree(source, key)
        with _progress(args, tree.manifest.total_size, "decrypt") as progress:
            manifest = model_tree.decrypt_tree(
                tree, args.output, expected_root=expected, progress=progress
            )
        print(
            f"decrypted {len(manifest.files)} files ({manifest.total_size} bytes) of model "
            f"{manifest.model_id} into {args.output}"
        )
    else:
        with _progress(args, source.stat().st_size, "decrypt") as progress:
            reader = model_tree.decrypt_file(
                source, args.output, key, expected_path=expected, progress=progress
            )
        print(
            f"decrypted {source} ({reader.size} bytes, format version {reader.version}) "
            f"into {args.output}"
        )


def _rekey(args: argparse.Namespace) -> None:
    from sealserve import model_tree
    from sealserve.keyfile import read_wrap_key

    old_key = read_wrap_key(args.wrap_key)
    new_key = read_wrap_key(args.new_key)
    source = _existing(args.input)
    how = "re-encrypted" if args.reencrypt else "rekeyed"
    if source.is_dir():
        tree = model_tree.ProtectedTree(source, old_key)
        with _progress(args, tree.manifest.total_size, "rekey") as progress:
            manifest = model_tree.rekey_tree(
                tree, args.output, new_key, reencrypt=args.reencrypt, progress=progress
            )
        print(f"{how} {len(manifest.files)} files of model {manifest.model_id} into {args.output}")
    else:
        with _progress(args, source.stat().st_size, "rekey") as progress:
            model_tree.rekey_file(
                source, args.output, old_key, new_key, reencrypt=args.reencrypt, progress=progress
            )
        where = "in place" if args.output == args.input else f"into {args.output}"
        print(f"{how} {source} {where}")


def _verify(args: argparse.Namespace) -> None:
    from sealserve import model_tree
    from sealserve.keyfile import read_wrap_key
    from sealserve.protected_files import ProtectedFileReader

    key = read_wrap_key(args.wrap_key)
    source = _existing(args.path)
    if source.is_dir():
        tree = model_tree.ProtectedTree(source, key)
        with _progress(args, tree.manifest.total_size, "verify") as progress:
            tree.verify(progress)
        manifest = tree.manifest
        print(
            f"OK: model {manifest.model_id}, {len(manifest.files)} files, "
            f'{manifest.total_size} bytes, bound to "{manifest.bound_root}"'
        )
    else:
        with (
            ProtectedFileReader(source, key) as reader,
            _progress(args, reader.size, "verify") as progress,
        ):
            for chunk in reader.iter_chunks():
                progress(len(chunk))
            print(
                f"OK: {source}, {reader.size} bytes, format version {reader.version}, bound "
                f'to "{reader.bound_path.decode("utf-8", "backslashreplace")}"'
            )


def _serve(args: argparse.Namespace) -> int:
    import asyncio

    from sealserve.serving import hardening
    from sealserve.serving.tensorflow_runtime import configure_threads, defer_runtime

    # First: TF Serving's protos import TensorFlow's, which would start its whole runtime;
    # it starts only if a model needs it (the server's start, or a later load), with the
    # thread pools of the flags
    defer_runtime()
    configure_threads(args.tensorflow_intra_op_parallelism, args.tensorflow_inter_op_parallelism)

    # the lifecycle lines are INFO and shown by default, as tensorflow_model_server's are
    level = logging.DEBUG if args.debug else getattr(logging, args.log_level.upper())
    logging.getLogger("sealserve").setLevel(level)
    if not args.debug:  # gRPC's C core's lines (one per refused handshake): errors only
        os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    if args.attestation:  # before any secret exists in this process
        _refuse_unmeasured_code()
        if args.model_config_file_poll_wait_seconds > 0:
            raise InvalidArgument(
                "an attested server's --model_config_file is measured, so it is not polled "
                "(--model_config_file_poll_wait_seconds must be 0); change models with "
                "HandleReloadConfigRequest as the admin (--admin_client_cert_sha256)"
            )
        hardening.forbid_core_dumps(required=args.attestation != "gramine")

    if _may_serve_openvino(args):  # its imports run beside this process's own
        from sealserve.serving.runtimes.conversion import prestart

        prestart()
    from sealserve.serving.server import ModelServer, ModelsUnavailable

    keys = _key_provider(args)
    options = _server_options(args, keys)
    if args.attestation:
        soft, hard = hardening.core_limit()
        try:
            dumpable: bool | None = hardening.dumpable()
        except OSError:  # a LibOS without PR_GET_DUMPABLE
            dumpable = None
        log.info("attested: core dumps off (RLIMIT_CORE %d/%d, dumpable %s)", soft, hard, dumpable)
    server = ModelServer(options, keys)
    _keep_leases(keys, server)
    try:
        asyncio.run(server.serve_until_signalled())
    except ModelsUnavailable as failed:  # as tensorflow_model_server: no start without them
        for name, why in failed.reasons.items():
            print(f"sealserve: error: model {name}: {why}", file=sys.stderr)
        print(
            f"sealserve: error: {len(failed.reasons)} model(s) failed to load, not serving "
            "(--allow_unavailable_models serves the others and keeps polling)",
            file=sys.stderr,
        )
        return EXIT_MODELS_UNAVAILABLE
    return 0


#: serve flags naming files whose content the simulated measurement covers, as Gramine's
#: trusted files do: the host may not swap the model list, the KBS's CA (a CA of its own would
#: let its own broker hand out keys to its own models), the TLS config or the tuning files
MEASURED_FILE_FLAGS = (
    "model_config_file",
    "key_broker_ca",
    "ssl_config_file",
    "batching_parameters_file",
    "monitoring_config_file",
    "admin_client_ca",
)


def _launch_config(args: argparse.Namespace) -> dict[str, object]:
    """What the simulated measurement covers: every serve flag as given (as Gramine fixes a
    server's arguments in its manifest, so that the host cannot change them) and the SHA-256
    of each file in `MEASURED_FILE_FLAGS`."""
    import hashlib

    from sealserve.fsio import read_user_file

    skip = {"run", "debug", "log_level"}  # what is shown, not what runs
    # canonical JSON has no floats (their text is not unique): render them as text
    config: dict[str, object] = {
        k: repr(v) if isinstance(v, float) else v
        for k, v in sorted(vars(args).items())
        if k not in skip
    }
    config["file_sha256"] = {
        flag: hashlib.sha256(read_user_file(path, flag.replace("_", " "))).hexdigest()
        for flag in MEASURED_FILE_FLAGS
        if (path := getattr(args, flag, None))
    }
    return config


def _measure(args: argparse.Namespace) -> None:
    from sealserve.attestation import measurement
    from sealserve.attestation.measurement import unmeasured_python_inputs

    reasons = unmeasured_python_inputs()
    if reasons:
        log.warning(
            "an attested `sealserve serve` refuses to start in this environment: %s",
            "; ".join(reasons),
        )
    print(measurement(_launch_config(args)).hex())


def _may_serve_openvino(args: argparse.Namespace) -> bool:
    """Whether a model may run on OpenVINO (`--runtime`, or a `model_platform` naming it):
    then a conversion process is started ahead. A guess from the text, before the config is
    parsed: a wrong one costs only that process."""
    if args.model_config_file:
        try:
            text = Path(args.model_config_file).read_text(errors="replace")
        except OSError:
            return False
        return re.search(r"model_platform\s*:\s*[\"']\s*openvino", text, re.IGNORECASE) is not None
    return str(args.runtime).strip().lower().startswith("openvino")


def _refuse_unmeasured_code() -> None:
    """An attested server runs only code its measurement covers: anything that could put
    other code into the process first (PYTHONPATH, a directory outside the installation on
    sys.path) stops the start-up, before a key is fetched."""
    from sealserve.attestation.measurement import unmeasured_python_inputs

    reasons = unmeasured_python_inputs()
    if reasons:
        raise FailedPrecondition(
            "an attested server runs only measured code, and "
            + "; ".join(reasons)
            + " (run the installed `sealserve` with a clean environment)"
        )


def _key_provider(args: argparse.Namespace) -> KeyProvider:
    """Keys from --model_key files; with --key_broker, the others from the KBS."""
    from sealserve.serving.keys import FallbackKeyProvider, StaticKeyProvider

    static = StaticKeyProvider.from_flags(args.model_key)
    if not args.key_broker:
        if args.attestation and not args.attested_tls:
            raise InvalidArgument("--attestation needs --key_broker or --attested_tls")
        return static
    if not args.attestation:
        raise InvalidArgument("--key_broker needs --attestation sim|gramine|tsm")
    from sealserve.attestation.cli import attester_for
    from sealserve.kbs.client import KbsKeyProvider

    attester = attester_for(args.attestation, args.sim_dir, _launch_config(args))
    return FallbackKeyProvider(
        static, KbsKeyProvider(args.key_broker, args.key_broker_ca, attester)
    )


def _server_options(args: argparse.Namespace, keys: KeyProvider) -> ServerOptions:
    from sealserve.serving import config_protos, model_config
    from sealserve.serving.attested_identity import attested_ssl_config
    from sealserve.serving.batching import BatchingOptions
    from sealserve.serving.loader import LoadOptions
    from sealserve.serving.manager import ManagerOptions
    from sealserve.serving.metrics import MonitoringConfig, read_monitoring_config
    from sealserve.serving.rest import RestOptions
    from sealserve.serving.runtimes import parse_runtime
    from sealserve.serving.server import ServerOptions
    from sealserve.serving.tls import load_ssl_config

    if args.model_config_file:
        if args.runtime != "tensorflow":
            raise InvalidArgument(
                "--runtime is for --model_base_path; with --model_config_file, set each "
                "model's model_platform"
            )
        models = model_config.read_model_config_file(args.model_config_file)
    elif args.model_base_path:
        models = model_config.single_model(
            args.model_name, args.model_base_path, parse_runtime(args.runtime)
        )
    else:
        raise InvalidArgument("give --model_base_path (with --model_name) or --model_config_file")
    batching = None
    if args.enable_batching:
        batching = BatchingOptions()
        if args.batching_parameters_file:
            batching = BatchingOptions.from_proto(
                config_protos.read(
                    "BatchingParameters", args.batching_parameters_file, "batching parameters file"
                )
            )
    elif args.batching_parameters_file:
        log.warning("--batching_parameters_file is ignored without --enable_batching")
    # before anything fetches a key: the first attestation binds the TLS key to certify
    brokered = _brokered_identity(args, keys)
    monitoring = MonitoringConfig()
    if args.monitoring_config_file:
        monitoring = read_monitoring_config(args.monitoring_config_file)
        if monitoring.enable and args.rest_api_port is None:
            log.warning("metrics are served on the REST port, and --rest_api_port is off")
    ssl = None
    if args.ssl_config_file:
        ssl = load_ssl_config(
            args.ssl_config_file,
            _ssl_config_key(args, keys),
            require_client_verify=args.require_client_cert,
            require_protected=bool(args.attestation),
        )
    elif args.require_client_cert:
        raise InvalidArgument("--require_client_cert needs --ssl_config_file")
    management, ssl = _model_management(args, models, ssl)
    attested = _attested_identity(args)
    if attested is not None:
        ssl = attested_ssl_config(attested, ssl)
    if brokered is not None:
        ssl = brokered.start(ssl).current()
    tags = tuple(t.strip() for t in args.saved_model_tags.split(",") if t.strip())
    return ServerOptions(
        models=models,
        grpc_port=args.port,
        rest_port=args.rest_api_port,
        bind_address=args.bind_address,
        ssl=ssl,
        attested=attested,
        brokered=brokered,
        manager=ManagerOptions(
            load=LoadOptions(tags=tags, warmup=args.enable_model_warmup),
            poll_seconds=args.file_system_poll_wait_seconds,
            max_load_retries=args.max_num_load_retries,
            load_retry_interval_seconds=args.load_retry_interval_micros / 1e6,
            load_threads=args.num_load_threads,
            allow_version_labels_for_unavailable_models=(
                args.allow_version_labels_for_unavailable_models
            ),
        ),
        rest=RestOptions(
            timeout_seconds=args.rest_api_timeout_in_ms / 1000,
            max_body_bytes=args.rest_api_max_body_bytes,
            max_json_depth=args.rest_api_max_json_depth,
            idle_timeout_seconds=args.rest_api_idle_timeout_seconds,
        ),
        grpc_max_message_bytes=args.grpc_max_message_bytes,
        grpc_channel_arguments=args.grpc_channel_arguments,
        grpc_health_check=args.enable_grpc_healthcheck_service,
        grpc_threads=args.grpc_max_threads,
        grpc_max_concurrent_rpcs=args.grpc_max_concurrent_rpcs,
        grpc_send_timeout_seconds=args.grpc_send_timeout_seconds,
        request_budget=BudgetOptions(args.max_request_bytes, args.max_in_flight_request_bytes),
        intra_op_threads=args.tensorflow_intra_op_parallelism,
        inter_op_threads=args.tensorflow_inter_op_parallelism,
        inference_threads=args.inference_threads,
        batching=batching,
        model_config_file=args.model_config_file,
        model_config_poll_seconds=args.model_config_file_poll_wait_seconds,
        monitoring=monitoring,
        model_management=management,
        trust=_model_trust(args),
        allow_unavailable_models=args.allow_unavailable_models,
    )


def _model_management(
    args: argparse.Namespace, models: list[ModelConfig], ssl: SSLConfig | None
) -> tuple[ModelManagementPolicy, SSLConfig | None]:
    """Who may reload the models; the ssl config with the admins' CA added to the CAs the
    handshake accepts."""
    from dataclasses import replace

    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from sealserve.fsio import read_user_file
    from sealserve.serving.model_management import ModelManagementPolicy, parse_fingerprint

    pins = frozenset(parse_fingerprint(pin) for pin in args.admin_client_cert_sha256)
    authorities: tuple[x509.Certificate, ...] = ()
    if args.admin_client_ca:
        try:
            authorities = tuple(
                x509.load_pem_x509_certificates(
                    read_user_file(args.admin_client_ca, "admin client CA")
                )
            )
        except ValueError:
            raise InvalidArgument(
                f"--admin_client_ca {args.admin_client_ca} is not PEM certificate text"
            ) from None
    root = args.admin_base_path_root
    if root is not None and not root.startswith("/"):
        raise InvalidArgument("--admin_base_path_root must be an absolute path")
    if (pins or authorities) and (ssl is None or not ssl.client_verify):
        raise InvalidArgument(
            "--admin_client_cert_sha256 and --admin_client_ca need mutual TLS "
            "(--ssl_config_file with client_verify: true): the admin is known by its client "
            "certificate"
        )
    if ssl is not None and authorities:
        extra = "".join(c.public_bytes(Encoding.PEM).decode("ascii") for c in authorities)
        ssl = replace(ssl, custom_ca=ssl.custom_ca + extra)
    policy = ModelManagementPolicy(
        admin_fingerprints=pins,
        admin_authorities=authorities,
        base_path_root=root,
        started_with={m.name: m.base_path for m in models},
    )
    return policy, ssl


def _attested_identity(args: argparse.Namespace) -> AttestedIdentity | None:
    if not args.attested_tls:
        return None
    if not args.attestation:
        raise InvalidArgument("--attested_tls needs --attestation sim|gramine|tsm")
    from sealserve.attestation.cli import attester_for
    from sealserve.serving.attested_identity import make_attested_identity

    return make_attested_identity(
        attester_for(args.attestation, args.sim_dir, _launch_config(args))
    )


def _keep_leases(keys: KeyProvider, server: Any) -> None:
    """Renew the keys the KBS lent (a policy's key_lease_seconds); unload a model whose key
    is revoked, or whose lease ends while the KBS cannot be reached."""
    from sealserve.kbs.client import KbsKeyProvider, LeaseKeeper

    broker = getattr(keys, "then", None)
    if isinstance(broker, KbsKeyProvider):
        LeaseKeeper(broker, server.manager.revoke).start()


def _brokered_identity(args: argparse.Namespace, keys: KeyProvider) -> BrokeredIdentity | None:
    if not args.key_broker_tls_name:
        return None
    if args.attested_tls:
        raise InvalidArgument("give --attested_tls or --key_broker_tls_name, not both")
    broker = getattr(keys, "then", None)
    if not args.key_broker or broker is None:
        raise InvalidArgument("--key_broker_tls_name needs --key_broker (and --attestation)")
    from sealserve.serving.attested_identity import BrokeredIdentity

    return BrokeredIdentity(broker.session, args.key_broker_tls_name)


def _model_trust(args: argparse.Namespace) -> ModelTrust:
    """Which models are keyed, which may be plain, and the owner's pins (measured flags)."""
    from sealserve.serving.model_config import ModelTrust, parse_model_pin

    pins = dict(parse_model_pin(flag) for flag in args.model_pin)
    if len(pins) != len(args.model_pin):
        raise InvalidArgument("--model_pin names a model twice")
    if args.insecure_plain_model and not args.key_broker:
        log.warning(
            "--insecure_plain_model only matters with --key_broker: models without a "
            "--model_key are served plain"
        )
    return ModelTrust(
        keyed_models=frozenset(flag.partition("=")[0] for flag in args.model_key),
        every_model_keyed=bool(args.key_broker),
        plain_models=frozenset(args.insecure_plain_model),
        pins=pins,
    )


def _ssl_config_key(args: argparse.Namespace, keys: KeyProvider) -> bytes | None:
    """The key of a protected ssl config: --ssl_config_key NAME (from a key file or the
    KBS), or the only --model_key given."""
    if args.ssl_config_key:
        return keys.key_for(args.ssl_config_key)
    if len(args.model_key) == 1:
        return keys.key_for(args.model_key[0].partition("=")[0])
    return None


def _certs_twoway(args: argparse.Namespace) -> None:
    from sealserve.tools.certs import make_twoway

    made = make_twoway(
        args.server_name,
        args.client_name,
        args.output,
        sans=args.san,
        rsa_bits=args.rsa,
        valid_days=args.days,
        encrypt_ssl_cfg_key=_ssl_cfg_key(args),
        ssl_cfg_bound_path=args.ssl_cfg_bound_path,
    )
    _print_certs(made, "mutual TLS")


def _certs_oneway(args: argparse.Namespace) -> None:
    from sealserve.tools.certs import make_oneway

    made = make_oneway(
        args.server_name,
        args.output,
        sans=args.san,
        rsa_bits=args.rsa,
        valid_days=args.days,
        encrypt_ssl_cfg_key=_ssl_cfg_key(args),
        ssl_cfg_bound_path=args.ssl_cfg_bound_path,
    )
    _print_certs(made, "server-only TLS")


def _ssl_cfg_key(args: argparse.Namespace) -> bytes | None:
    from sealserve.keyfile import read_wrap_key

    return read_wrap_key(args.encrypt_ssl_cfg) if args.encrypt_ssl_cfg else None


def _print_certs(made: CertificateSet, kind: str) -> None:
    print(f"wrote {kind} keys and certificates to {made.root}")
    print(f"  sealserve serve: --ssl_config_file {made.ssl_config}")
    print(f"  sealserve kbs serve: --tls-cert {made.server_cert} --tls-key {made.server_key}")
    print(f"  clients trust: {made.trust_anchor}")


def _models_make(args: argparse.Namespace) -> None:
    from sealserve.tools.models import make_model

    make_model(args.name, Path(args.directory))
    print(f"wrote SavedModel {args.name} to {args.directory}")


# -- helpers -----------------------------------------------------------------------------


def _existing(path: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise NotFound(f"{path} not found")
    if not (p.is_dir() or p.is_file()):
        raise InvalidArgument(f"{path} is not a regular file or directory")
    return p


def _tree_size(root: Path) -> int:
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())


@contextlib.contextmanager
def _progress(args: argparse.Namespace, total: int, what: str) -> Iterator[Callable[[int], None]]:
    """A byte-counting progress bar on stderr, only on a terminal and without --quiet."""
    if getattr(args, "quiet", False) or not sys.stderr.isatty():
        yield lambda n: None
        return
    from tqdm import tqdm

    with tqdm(
        total=total,
        desc=what,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        leave=False,
    ) as bar:
        yield bar.update


if __name__ == "__main__":
    sys.exit(main())
