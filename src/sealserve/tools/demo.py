"""`make demo`: the confidential-serving flow end to end on local defaults, narrated.

The owner makes a model and a key, encrypts the model, and makes mutual-TLS certificates; a
server runs `sealserve serve` with the seed's flags and decrypts the model in memory only; a
requester predicts over REST and gRPC. Each step prints the command it runs (copy-paste-able)
and runs it for real. Everything lives under `.demo/` in the current directory, recreated at
each run; the server is stopped at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

SEALSERVE = str(Path(sys.executable).with_name("sealserve"))


class DemoFailed(Exception):
    pass


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def sealserve(*args: str, expect_failure: bool = False, quiet: bool = False) -> str:
    """Run the real CLI, echoing the command as a user would type it (and, unless `quiet`,
    what it printed)."""
    print("$ sealserve " + " ".join(shlex.quote(a) for a in args), flush=True)
    result = subprocess.run([SEALSERVE, *args], capture_output=True, text=True)
    shown = (result.stdout + result.stderr).strip()
    if shown and not quiet:
        print("  " + shown.replace("\n", "\n  "), flush=True)
    if (result.returncode != 0) != expect_failure:
        raise DemoFailed(f"`sealserve {' '.join(args)}` exited with {result.returncode}")
    return result.stdout


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def run(work: Path) -> None:
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    plain = work / "plain" / "half_plus_two" / "1"
    key = work / "keys" / "half_plus_two.key"
    encrypted = work / "models" / "half_plus_two" / "1"
    certs = work / "ssl_configure"

    step("1. The model owner generates a SavedModel (TF Serving's half_plus_two)")
    sealserve("models", "make", "half_plus_two", str(plain))

    step("2. ... and a wrap key that only a verified TEE will ever receive")
    sealserve("keygen", "-w", str(key))

    step("3. Every file of the model is encrypted (Gramine's format) plus a manifest")
    sealserve("encrypt", "-w", str(key), "-i", str(plain), "-o", str(encrypted))
    leaked = [p for p in encrypted.rglob("*") if p.is_file() and b"serving" in p.read_bytes()]
    if leaked:
        raise DemoFailed(f"plaintext visible in {leaked[0]}")
    print("  (no file of the encrypted tree contains any of the model's plaintext)")
    sealserve("verify", "-w", str(key), str(encrypted))

    step("4. Mutual-TLS certificates; the server's ssl.cfg is encrypted with the model's key")
    sealserve(
        "certs",
        "twoway",
        "localhost",
        "client.local",
        "-o",
        str(certs),
        "--san",
        "127.0.0.1",
        "--encrypt-ssl-cfg",
        str(key),
    )

    step(
        "5. A key broker (KBS) on a simulated TEE: it will release the model key only to a "
        "server whose measured code and flags the owner pinned"
    )
    sealserve("sim", "init", str(work / "sim"))
    sealserve("kbs", "init", str(work / "kbs-keys"))
    kbs_tls = work / "kbs-tls"
    sealserve("certs", "oneway", "localhost", "-o", str(kbs_tls), "--san", "127.0.0.1")
    kbs_port = free_port()
    kbs_url = f"https://127.0.0.1:{kbs_port}"
    broker = start_process(
        [
            "kbs",
            "serve",
            "--db",
            str(work / "kbs.db"),
            "--master-key",
            str(work / "kbs-keys" / "master.key"),
            "--signing-key",
            str(work / "kbs-keys" / "signing-key.pem"),
            "--admin-token-file",
            str(work / "kbs-keys" / "admin.token"),
            "--tls-cert",
            str(kbs_tls / "server" / "cert.pem"),
            "--tls-key",
            str(kbs_tls / "server" / "key.pem"),
            "--port",
            str(kbs_port),
            "--insecure-trust-sim-root",
            str(work / "sim"),
        ],
        work / "kbs.log",
        ready="https://",
    )
    try:
        admin = [
            "--url",
            kbs_url,
            "--ca",
            str(kbs_tls / "server" / "cert.pem"),
            "--admin-token-file",
            str(work / "kbs-keys" / "admin.token"),
        ]
        resource = "sealserve/model-key/half_plus_two"
        sealserve("kbs", "secret", "put", resource, "--file", str(key), *admin)
        grpc_port, rest_port = free_port(), free_port()
        flags = [
            "--model_name=half_plus_two",
            f"--model_base_path={encrypted.parent}",
            f"--port={grpc_port}",
            f"--rest_api_port={rest_port}",
            "--enable_model_warmup=true",
            f"--ssl_config_file={certs / 'ssl.cfg'}",
            "--ssl_config_key=half_plus_two",
            "--file_system_poll_wait_seconds=1",
            "--bind_address=127.0.0.1",
            f"--key_broker={kbs_url}",
            f"--key_broker_ca={kbs_tls / 'server' / 'cert.pem'}",
            "--attestation=sim",
            f"--sim_dir={work / 'sim'}",
        ]
        mr_enclave = sealserve("measure", *flags).strip()
        policy = work / "policy.toml"
        policy.write_text(
            f'tee = ["sim"]\n[[sim]]\nmr_enclave = ["{mr_enclave}"]\n'
            'mr_signer = "any"\nisv_prod_id = [0]\n'
        )
        sealserve("kbs", "policy", "set", resource, str(policy), *admin)

        step(
            "6. The server: the seed's tensorflow_model_server line with the program name "
            "changed, and no key file: it attests to the KBS, gets the model key (and the "
            "ssl.cfg's) and decrypts the model in memory only"
        )
        server = start_process(
            ["serve", *flags], work / "server.log", ready="serving half_plus_two"
        )
        try:
            requester(certs, grpc_port, rest_port)

            step(
                "8. A new version encrypted under a key the server does not have is "
                "refused; version 1 keeps serving"
            )
            other_key = work / "keys" / "other.key"
            sealserve("keygen", "-w", str(other_key))
            staging = work / "staging"
            sealserve("encrypt", "-w", str(other_key), "-i", str(plain), "-o", str(staging))
            staging.rename(encrypted.parent / "2")
            status = wait_for_failed_version(certs, rest_port, "2")
            print(f"  version 2: {status['state']}, {status['status']['error_message']}")
            print(f"  predictions still: {rest_predict(certs, rest_port, [1.0, 2.0, 5.0])}")
        finally:
            stop_process(server)
        shutil.rmtree(encrypted.parent / "2", ignore_errors=True)

        step(
            "9. A second server launched with one flag changed measures differently: the "
            "KBS refuses it the key and says why"
        )
        other_grpc, other_rest = free_port(), free_port()
        changed = [
            f.replace(f"--port={grpc_port}", f"--port={other_grpc}")
            .replace(f"--rest_api_port={rest_port}", f"--rest_api_port={other_rest}")
            .replace("--enable_model_warmup=true", "--enable_model_warmup=false")
            for f in flags
            if not f.startswith("--ssl_config")
        ]
        refused = start_process(["serve", *changed], work / "server2.log", ready="serving ")
        try:
            status = wait_for_failed_version(None, other_rest, "1")
            print(
                f"  version 1: {status['state']}, {status['status']['error_code']}: "
                f"{status['status']['error_message']}"
            )
            if status["status"]["error_code"] != "PERMISSION_DENIED":
                raise DemoFailed("the modified server was not refused by the KBS")
        finally:
            stop_process(refused)
        print("  the KBS's audit log (hash-chained) of its release decisions:")
        for line in sealserve(
            "kbs", "audit", "--resource", resource, *admin, quiet=True
        ).splitlines():
            if line.startswith("{") and '"release"' in line:
                record = json.loads(line)
                print(
                    f"    {record['decision']:8} tee={record['tee']} "
                    f"mr_enclave={record['measurements'].get('mr_enclave', '')[:16]}… "
                    f"{record['reason']}"
                )
    finally:
        stop_process(broker)

    step("10. Tampering is caught and named: a file swapped for another")
    tampered = work / "tampered" / "1"
    shutil.copytree(encrypted, tampered)
    index = tampered / "variables" / "variables.index"
    data = tampered / "variables" / "variables.data-00000-of-00001"
    index_bytes, data_bytes = index.read_bytes(), data.read_bytes()
    index.write_bytes(data_bytes)
    data.write_bytes(index_bytes)
    sealserve("verify", "-w", str(key), str(tampered), expect_failure=True)

    step("11. Rotating the wrap key rewrites only each file's 4 KiB metadata node")
    new_key = work / "keys" / "half_plus_two.next.key"
    sealserve("keygen", "-w", str(new_key))
    rotated = work / "rotated" / "half_plus_two" / "1"
    sealserve(
        "rekey", "-w", str(key), "--new-key", str(new_key), "-i", str(encrypted), "-o", str(rotated)
    )
    sealserve("verify", "-w", str(new_key), str(rotated))

    step("12. The owner can always get the exact original back")
    decrypted = work / "decrypted"
    sealserve("decrypt", "-w", str(new_key), "-i", str(rotated), "-o", str(decrypted))
    if tree_digest(decrypted) != tree_digest(plain):
        raise DemoFailed("decrypted tree differs from the original")
    print("  the decrypted tree is byte-identical to the original SavedModel")


def requester(certs: Path, grpc_port: int, rest_port: int) -> None:
    step("7. The requester predicts over REST and gRPC, both with mutual TLS")
    print(
        f"$ curl --cacert {certs}/ca_cert.pem --cert {certs}/client/cert.pem "
        f"--key {certs}/client/key.pem -d '{{\"instances\": [1.0, 2.0, 5.0]}}' "
        f"https://localhost:{rest_port}/v1/models/half_plus_two:predict"
    )
    predictions = rest_predict(certs, rest_port, [1.0, 2.0, 5.0])
    print(f'  {{"predictions": {predictions}}}')
    if predictions != [2.5, 3.0, 4.5]:
        raise DemoFailed(f"unexpected predictions {predictions}")
    print(
        f"  gRPC PredictionService.Predict (tensorflow-serving-api stubs): "
        f"{grpc_predict(certs, grpc_port, [1.0, 2.0, 5.0])}"
    )
    try:
        rest_predict(certs, rest_port, [1.0], client_certificate=False)
    except OSError as exc:
        print(f"  a client without a certificate is refused ({type(exc).__name__})")
    else:
        raise DemoFailed("a client without a certificate was served")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_process(args: list[str], log_path: Path, ready: str) -> subprocess.Popen[bytes]:
    """Start `sealserve` in the background; return once its output contains `ready`."""
    print("$ sealserve " + " ".join(shlex.quote(a) for a in args), flush=True)
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen([SEALSERVE, *args], stdout=log_file, stderr=log_file)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        if ready in text:
            print("  " + next(line for line in text.splitlines() if ready in line))
            return process
        if process.poll() is not None:
            raise DemoFailed(f"the server exited: {text.strip()}")
        time.sleep(0.2)
    process.kill()
    raise DemoFailed(f"`sealserve {args[0]}` did not start within 120 s")


def stop_process(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
    print(f"  (stopped {' '.join(map(str, process.args[1:3]))})")  # type: ignore[index]


def tls_context(certs: Path, client_certificate: bool = True) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs / "ca_cert.pem"))
    if client_certificate:
        context.load_cert_chain(
            str(certs / "client" / "cert.pem"), str(certs / "client" / "key.pem")
        )
    return context


def rest_predict(
    certs: Path, port: int, xs: list[float], *, client_certificate: bool = True
) -> list[float]:
    request = urllib.request.Request(
        f"https://localhost:{port}/v1/models/half_plus_two:predict",
        method="POST",
        data=json.dumps({"instances": xs}).encode(),
    )
    context = tls_context(certs, client_certificate)
    with urllib.request.urlopen(request, timeout=30, context=context) as response:
        return [float(v) for v in json.loads(response.read())["predictions"]]


def wait_for_failed_version(certs: Path | None, port: int, version: str) -> dict[str, Any]:
    """The status of a version once it has ended (over plain HTTP when `certs` is None)."""
    scheme = "https" if certs else "http"
    url = f"{scheme}://localhost:{port}/v1/models/half_plus_two"
    context = tls_context(certs) if certs else None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with urllib.request.urlopen(url, timeout=30, context=context) as response:
            for status in json.loads(response.read())["model_version_status"]:
                if status["version"] == version and status["state"] == "END":
                    return dict(status)
        time.sleep(0.3)
    raise DemoFailed(f"version {version} did not settle")


def grpc_predict(certs: Path, port: int, xs: list[float]) -> list[float]:
    from sealserve.serving.tensorflow_runtime import import_tensorflow

    import_tensorflow()  # the stubs import TensorFlow: quietly, please

    import grpc
    import numpy as np
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from sealserve.serving.tensor_proto import from_numpy, to_numpy

    credentials = grpc.ssl_channel_credentials(
        (certs / "ca_cert.pem").read_bytes(),
        (certs / "client" / "key.pem").read_bytes(),
        (certs / "client" / "cert.pem").read_bytes(),
    )
    with grpc.secure_channel(f"localhost:{port}", credentials) as channel:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "half_plus_two"
        from_numpy(np.asarray(xs, np.float32), out=request.inputs["x"])
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            request, timeout=30
        )
    return [float(v) for v in to_numpy(response.outputs["y"])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(".demo"),
        help="where the demo's files go (recreated; default .demo)",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        run(args.workdir)
    except DemoFailed as exc:
        print(f"\ndemo failed: {exc}", file=sys.stderr)
        return 1
    print(
        f"\nDemo complete in {time.perf_counter() - started:.0f} s; its files are in "
        f"{args.workdir}/"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
