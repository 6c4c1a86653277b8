"""One prediction from the command line: `sealserve predict`.

The seed's README line `curl -d '{"instances": [1.0, 2.0, 5.0]}' -X POST
http://localhost:8501/v1/models/half_plus_two:predict`, without curl, over REST or gRPC, with
TLS or mutual TLS:

    sealserve predict --rest https://localhost:8501 -m half_plus_two \\
        --json '{"instances": [1.0, 2.0, 5.0]}' --ca ca_cert.pem --cert client/cert.pem \\
        --key client/key.pem
    sealserve predict --grpc localhost:8500 -m half_plus_two --json '[1.0, 2.0, 5.0]'

Input (`--json TEXT`, `@FILE` or `-` for stdin) is TF Serving's REST request body; for
convenience a bare JSON list is taken as `{"instances": list}` and an object without
`instances` / `inputs` as named inputs, `{"inputs": object}`. `--npy NAME=FILE` (repeatable)
sends numpy arrays instead.

- REST: the body is POSTed as given (re-encoded only when the shorthand or
  `--signature_name` changed it) and the response is printed exactly as the server sent it.
- gRPC: the model's signatures are fetched with GetModelMetadata, the JSON is decoded with
  the signature's dtypes by the same code and rules as sealserve's REST API (TF Serving's
  json_tensor.cc), sent with Predict, and the outputs are printed as TF Serving's REST API
  would print them (`predictions` for `instances` input, `outputs` otherwise), so both
  protocols print the same text.

Errors (bad input, unreachable server, a server error) are one line and a non-zero exit:
`NOT_FOUND: Servable not found for request: Latest(x)` for gRPC, `HTTP 404: ...` for REST.
Only TF Serving's public APIs are used, so it works against any TF Serving. The REST path
does not import TensorFlow; the gRPC path does (TF Serving's protos need it), quietly.
Stateless apart from one run; not meant for concurrent use.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from dataclasses import dataclass
from typing import Any, TextIO

import numpy as np

from sealserve.client import (
    GRPC_DEFAULT_PORT,
    REST_DEFAULT_PORT,
    TlsFiles,
    attested,
    client_certificate_error,
    grpc_channel_options,
    grpc_credentials,
    grpc_error_text,
    grpc_target,
    model_path,
    needs_client_certificate,
    rest_base_url,
    ssl_context,
)
from sealserve.client.attested import requester_tls
from sealserve.errors import Code, InvalidArgument, NotFound, SealserveError

__all__ = ["PredictOptions", "add_arguments", "predict_grpc", "predict_rest", "run"]

DEFAULT_TIMEOUT = 30.0
_MODEL_URL = re.compile(r"^(?P<base>[^/]+//[^/]+)(?P<path>/v1/models/[^:]+):predict$")


@dataclass(frozen=True)
class PredictOptions:
    model_name: str
    model_version: int | None = None
    version_label: str | None = None
    signature_name: str | None = None
    tls: TlsFiles | None = None
    timeout: float = DEFAULT_TIMEOUT


# ---------------------------------------------------------------------------------------------
# Input


def read_json_argument(value: str, stdin: TextIO | None = None) -> str:
    """`--json` text: inline, `@FILE` or `-` (stdin), as curl's `-d`."""
    if value == "-":
        return (stdin or sys.stdin).read()
    if value.startswith("@"):
        from sealserve.fsio import read_user_file

        data = read_user_file(value[1:], "JSON file")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidArgument(f"{value[1:]} is not UTF-8 text") from None
    return value


def request_document(text: str, signature_name: str | None) -> tuple[dict[str, Any], bool]:
    """The REST request body for `text`, and whether it differs from `text` (the shorthands
    of the module docstring, or a signature name added)."""
    from sealserve.serving.rest_json import loads

    try:
        value = loads(text)
    except SealserveError as exc:
        raise InvalidArgument(f"--json is not valid JSON: {exc}") from None
    changed = False
    if isinstance(value, list):
        value, changed = {"instances": value}, True
    elif isinstance(value, dict) and not ({"instances", "inputs"} & value.keys()):
        if "signature_name" in value:
            raise InvalidArgument("--json names a signature but has no 'instances' or 'inputs' key")
        value, changed = {"inputs": value}, True
    elif not isinstance(value, dict):
        raise InvalidArgument(
            '--json must be a request body ({"instances": ...} or {"inputs": ...}), '
            "a list of instances, or an object of named inputs"
        )
    if signature_name:
        named = value.get("signature_name")
        if named is None:
            value["signature_name"], changed = signature_name, True
        elif named != signature_name:
            raise InvalidArgument(
                f"--json names signature {named!r} but --signature_name says {signature_name!r}"
            )
    return value, changed


def read_npy_arguments(items: list[str]) -> dict[str, np.ndarray]:
    """`NAME=FILE.npy` pairs as arrays (no pickles: a .npy from elsewhere runs no code)."""
    arrays: dict[str, np.ndarray] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise InvalidArgument(f"--npy {item!r}: expected NAME=FILE.npy")
        if name in arrays:
            raise InvalidArgument(f"--npy names input {name!r} twice")
        try:
            arrays[name] = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise NotFound(f"--npy file {path} not found") from None
        except (OSError, ValueError) as exc:
            raise InvalidArgument(f"--npy {path} is not a numpy .npy file: {exc}") from None
    return arrays


def _npy_json(array: np.ndarray) -> Any:
    if array.dtype.kind in "SO":
        raise InvalidArgument("byte-string .npy inputs cannot go in JSON; use --grpc")
    return array.tolist()


# ---------------------------------------------------------------------------------------------
# REST


def rest_url(address: str, options: PredictOptions) -> str:
    """The :predict URL: from a base address and the model flags, or a full
    `.../v1/models/NAME[...]:predict` URL as given."""
    secure = options.tls is not None
    if "/v1/models/" in address:
        match = _MODEL_URL.match(address.strip())
        if match is None:
            raise InvalidArgument(
                f"{address} is not a TF Serving predict URL (.../v1/models/NAME:predict)"
            )
        if options.model_name or options.model_version is not None or options.version_label:
            raise InvalidArgument("the URL names the model: drop --model_name/version/label")
        return rest_base_url(match.group("base"), secure) + match.group("path") + ":predict"
    if not options.model_name:
        raise InvalidArgument("give --model_name (or a full .../v1/models/NAME:predict URL)")
    path = model_path(options.model_name, options.model_version, options.version_label)
    return rest_base_url(address, secure) + path + ":predict"


def predict_rest(url: str, body: bytes, options: PredictOptions) -> bytes:
    """POST one Predict body; the response body, or a one-line error."""
    return asyncio.run(_post(url, body, options))


async def _post(url: str, body: bytes, options: PredictOptions) -> bytes:
    import aiohttp

    tls = options.tls
    connector = aiohttp.TCPConnector(ssl=ssl_context(tls) if tls is not None else True)
    server_name = tls.server_name if tls is not None else None
    try:
        async with (
            aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=options.timeout)
            ) as session,
            session.post(
                url,
                data=body,
                headers={"Content-Type": "application/json"},
                server_hostname=server_name,
            ) as response,
        ):
            payload = await response.read()
            status = response.status
    except TimeoutError:
        raise SealserveError(
            f"no answer from {url} in {options.timeout:g} s", code=Code.DEADLINE_EXCEEDED
        ) from None
    except aiohttp.ClientError as exc:
        if needs_client_certificate(url, options.tls):
            raise client_certificate_error() from None
        raise SealserveError(
            f"cannot reach {url}: {' '.join(str(exc).split())}", code=Code.UNAVAILABLE
        ) from None
    if status != 200:
        raise SealserveError(f"HTTP {status}: {_rest_error_text(payload)}", code=_http_code(status))
    return payload


def _rest_error_text(payload: bytes) -> str:
    try:
        message = json.loads(payload).get("error")
    except (ValueError, AttributeError):
        message = None
    text = message if isinstance(message, str) else payload[:500].decode("utf-8", "replace")
    return " ".join(text.split()) or "(empty response)"


def _http_code(status: int) -> Code:
    # TF Serving's HTTP mapping, read backwards (reference/tf-serving-api.md)
    return {
        400: Code.INVALID_ARGUMENT,
        401: Code.UNAUTHENTICATED,
        403: Code.PERMISSION_DENIED,
        404: Code.NOT_FOUND,
        409: Code.ALREADY_EXISTS,
        413: Code.RESOURCE_EXHAUSTED,
        429: Code.RESOURCE_EXHAUSTED,
        499: Code.CANCELLED,
        501: Code.UNIMPLEMENTED,
        503: Code.UNAVAILABLE,
        504: Code.DEADLINE_EXCEEDED,
    }.get(status, Code.UNKNOWN)


# ---------------------------------------------------------------------------------------------
# gRPC


def predict_grpc(
    target: str,
    options: PredictOptions,
    *,
    document: dict[str, Any] | None = None,
    arrays: dict[str, np.ndarray] | None = None,
) -> bytes:
    """One Predict over gRPC from a REST-style `document` or named `arrays`; the outputs as
    TF Serving's REST API would write them."""
    import grpc

    from sealserve.serving.tensorflow_runtime import protos_importable

    protos_importable()
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    if not options.model_name:
        raise InvalidArgument("give --model_name")
    channel_options = grpc_channel_options(options.tls)
    if options.tls is None:
        channel = grpc.insecure_channel(target, options=channel_options)
    else:
        credentials = grpc_credentials(options.tls)
        channel = grpc.secure_channel(target, credentials, options=channel_options)
    with channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        try:
            signatures = _signatures(stub, options)
            request, row_format = _predict_request(signatures, options, document, arrays)
            response = stub.Predict(request, timeout=options.timeout)
        except grpc.RpcError as error:
            code, details = grpc_error_text(error)
            if code == "UNAVAILABLE" and needs_client_certificate(target, options.tls):
                raise client_certificate_error() from None
            raise SealserveError(f"{code}: {details}", code=_grpc_code(code)) from None
    from sealserve.serving.rest_json import format_predict_response
    from sealserve.serving.tensor_proto import to_numpy

    outputs = {alias: to_numpy(tensor) for alias, tensor in response.outputs.items()}
    return format_predict_response(outputs, row_format)


def _grpc_code(name: str) -> Code:
    try:
        return Code[name]
    except KeyError:
        return Code.UNKNOWN


def _fill_model_spec(spec: Any, options: PredictOptions) -> None:
    spec.name = options.model_name
    if options.model_version is not None and options.version_label:
        raise InvalidArgument("give a model version or a version label, not both")
    if options.model_version is not None:
        spec.version.value = options.model_version
    elif options.version_label:
        spec.version_label = options.version_label


def _signatures(stub: Any, options: PredictOptions) -> dict[str, Any]:
    """The model's signatures (SignatureInfo by key), from GetModelMetadata."""
    from tensorflow_serving.apis import get_model_metadata_pb2

    from sealserve.serving.servable import signature_infos

    request = get_model_metadata_pb2.GetModelMetadataRequest()
    _fill_model_spec(request.model_spec, options)
    request.metadata_field.append("signature_def")
    response = stub.GetModelMetadata(request, timeout=options.timeout)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    if "signature_def" not in response.metadata or not response.metadata["signature_def"].Unpack(
        signature_map
    ):
        raise SealserveError("the server's metadata has no signature_def", code=Code.INTERNAL)
    return signature_infos(dict(signature_map.signature_def))


def _predict_request(
    signatures: dict[str, Any],
    options: PredictOptions,
    document: dict[str, Any] | None,
    arrays: dict[str, np.ndarray] | None,
) -> tuple[Any, bool]:
    from tensorflow_serving.apis import predict_pb2

    from sealserve.serving.rest_json import parse_predict_request
    from sealserve.serving.signatures import DEFAULT_SIGNATURE
    from sealserve.serving.tensor_proto import from_numpy

    def lookup(key: str) -> Any:
        if key not in signatures:
            known = ", ".join(sorted(signatures)) or "none"
            raise NotFound(f"model {options.model_name} has no signature {key!r} (it has {known})")
        return signatures[key]

    if document is not None:
        parsed = parse_predict_request(document, lookup)
        signature_name, inputs, row_format = parsed.signature_name, parsed.inputs, parsed.row_format
    else:
        assert arrays is not None
        signature_name = options.signature_name or DEFAULT_SIGNATURE
        inputs = _typed_arrays(lookup(signature_name), arrays)
        row_format = False
    signature = lookup(signature_name)
    request = predict_pb2.PredictRequest()
    _fill_model_spec(request.model_spec, options)
    request.model_spec.signature_name = signature_name
    for alias, value in inputs.items():
        dtype = signature.inputs[alias].dtype
        from_numpy(value, dtype, tensor_content=True, out=request.inputs[alias])
    return request, row_format


def _typed_arrays(signature: Any, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """.npy arrays converted to the signature's dtypes where numpy calls that safe within a
    kind (float64 -> float32 is allowed, float -> int is not)."""
    from sealserve.serving.tensor_proto import DTYPE_NAMES

    unknown = sorted(set(arrays) - set(signature.inputs))
    if unknown:
        raise InvalidArgument(
            f"--npy input(s) {', '.join(unknown)} not in the signature, whose inputs are "
            f"{', '.join(signature.inputs)}"
        )
    typed = {}
    for alias, array in arrays.items():
        dtype_name = signature.inputs[alias].dtype
        if dtype_name == "DT_STRING":
            typed[alias] = array
            continue
        target = DTYPE_NAMES.get(dtype_name)
        if target is None or not np.can_cast(array.dtype, target, casting="same_kind"):
            raise InvalidArgument(
                f"--npy {alias}: a {array.dtype} array cannot be sent as {dtype_name}"
            )
        typed[alias] = array.astype(target, copy=False)
    return typed


# ---------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--rest",
        "--url",
        dest="rest",
        metavar="URL",
        help="REST endpoint: HOST[:PORT] or http(s)://HOST[:PORT], or a full "
        ".../v1/models/NAME:predict URL",
    )
    where.add_argument("--grpc", metavar="HOST:PORT", help="gRPC endpoint (port 8500 if omitted)")
    model = parser.add_argument_group("model")
    model.add_argument("-m", "--model_name", help="model name")
    version = model.add_mutually_exclusive_group()
    version.add_argument("--model_version", type=int, metavar="N", help="a version number")
    version.add_argument("--version_label", metavar="LABEL", help="a version label")
    model.add_argument(
        "--signature_name", help="signature (default: the body's, else serving_default)"
    )
    data = parser.add_argument_group("input (one of)")
    data.add_argument(
        "-d",
        "--json",
        dest="json",
        metavar="DATA",
        help="request body as TF Serving's REST API takes it, inline, @FILE or - (stdin); "
        "a bare list means instances, an object without instances/inputs named inputs",
    )
    data.add_argument(
        "--npy",
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="input NAME from a numpy .npy file (repeatable)",
    )
    tls = parser.add_argument_group("TLS")
    tls.add_argument("--ca", metavar="PEM", help="CA certificate to check the server against")
    tls.add_argument(
        "--cert",
        metavar="PEM",
        help="client certificate (with --key: mutual TLS); alone, the server certificate to "
        "trust (as the seed's -crt)",
    )
    tls.add_argument("--key", metavar="PEM", help="client private key")
    tls.add_argument("--tls_server_name", metavar="NAME", help="name the server certificate has")
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds (default 30)"
    )
    attested.add_arguments(parser)


def run(args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    """`sealserve predict`: print the response; errors raise SealserveError (one line)."""
    from sealserve.serving.tensorflow_runtime import defer_runtime

    defer_runtime()  # a client needs TF Serving's protos, never TensorFlow's runtime
    out = out or sys.stdout
    if bool(args.json) == bool(args.npy):
        raise InvalidArgument("give the input with --json or with --npy (one of them)")
    if args.timeout <= 0:
        raise InvalidArgument("--timeout must be positive")
    options = PredictOptions(
        model_name=args.model_name or "",
        model_version=args.model_version,
        version_label=args.version_label,
        signature_name=args.signature_name,
        tls=requester_tls(
            args,
            args.rest if args.rest is not None else args.grpc or "localhost",
            REST_DEFAULT_PORT if args.rest is not None else GRPC_DEFAULT_PORT,
            ca=args.ca,
            cert=args.cert,
            key=args.key,
            server_name=args.tls_server_name,
        ),
        timeout=args.timeout,
    )
    document = None
    arrays = None
    text = ""
    changed = True
    if args.json:
        text = read_json_argument(args.json)
        document, changed = request_document(text, args.signature_name)
    else:
        arrays = read_npy_arguments(args.npy)
    if args.rest is not None:
        url = rest_url(args.rest, options)
        if arrays is not None:
            document = {"inputs": {name: _npy_json(a) for name, a in arrays.items()}}
            if args.signature_name:
                document["signature_name"] = args.signature_name
        body = text.encode() if not changed else json.dumps(document).encode()
        answer = predict_rest(url, body, options)
    else:
        answer = predict_grpc(grpc_target(args.grpc), options, document=document, arrays=arrays)
    text_out = answer.decode("utf-8", "replace")
    out.write(text_out if text_out.endswith("\n") else text_out + "\n")
    out.flush()
    return 0
