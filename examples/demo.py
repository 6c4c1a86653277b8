"""`make demo`: the confidential-serving flow end to end on local defaults, narrated.

The owner makes three models (half_plus_two, digits, ResNet-50), a wrap key per model and
mutual-TLS certificates, and encrypts the models and the server's ssl.cfg; a key broker (KBS)
on a simulated TEE releases each key only to a server whose measured code and flags the owner
pinned; one `sealserve serve` with the seed's flags attests, receives the keys and decrypts
the models in memory only; a requester predicts half_plus_two over REST and gRPC, classifies
held-out digits (accuracy printed) and runs the benchmark client on ResNet-50; a server with
modified code is refused its key. Each step prints the command it runs (copy-paste-able) and
runs it for real. Everything lives under `.demo/` in the current directory, recreated at each
run; every server is stopped at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

SEALSERVE = str(Path(sys.executable).with_name("sealserve"))
# a server starts once its models are loaded and warmed up: ResNet-50 takes a while on a
# busy machine
START_SECONDS = 300

#: served name → `sealserve models make` name; ResNet-50 is served under the Intel model's name
MODELS = {
    "half_plus_two": "half_plus_two",
    "digits": "digits",
    "resnet50-v15-fp32": "resnet50",
}
#: the runtime of each served model (TF Serving's model_platform): ResNet-50 runs on OpenVINO
#: in bf16 (fp32 on CPUs without bf16), checked against TensorFlow at load (docs/openvino.md)
PLATFORMS = {"resnet50-v15-fp32": "openvino:bf16"}
MIN_DIGITS_ACCURACY = 0.95
#: the benchmark client's run on ResNet-50: a few seconds on two cores
BENCHMARK_FLAGS = ["-batch", "1", "-cnum", "2", "-loop", "16", "--warmup", "1", "-q"]


class DemoFailed(Exception):
    pass


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def sealserve(
    *args: str,
    expect_failure: bool = False,
    quiet: bool = False,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
) -> str:
    """Run the real CLI, echoing the command as a user would type it (and, unless `quiet`,
    what it printed); `env`: variables set for this command only."""
    prefix = "".join(f"{k}={shlex.quote(v)} " for k, v in (env or {}).items())
    print(f"$ {prefix}sealserve " + " ".join(shlex.quote(a) for a in args), flush=True)
    try:
        result = subprocess.run(
            [SEALSERVE, *args],
            capture_output=True,
            text=True,
            env={**os.environ, **env} if env else None,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise DemoFailed(f"`sealserve {args[0]}` still ran after {timeout} s") from None
    shown = (result.stdout + result.stderr).strip()
    if shown and not quiet:
        print("  " + shown.replace("\n", "\n  "), flush=True)
    if (result.returncode != 0) != expect_failure:
        raise DemoFailed(f"`sealserve {' '.join(args)}` exited with {result.returncode}")
    return result.stdout + (result.stderr if expect_failure else "")


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
    plain = {name: work / "plain" / name / "1" for name in MODELS}
    keys = {name: work / "keys" / f"{name}.key" for name in MODELS}
    encrypted = {name: work / "models" / name / "1" for name in MODELS}
    certs = work / "ssl_configure"

    step(
        "1. The model owner generates three SavedModels: TF Serving's half_plus_two, a digits "
        "classifier (trained now on scikit-learn's bundled digits) and ResNet-50 (random "
        "weights, the Intel model's interface)"
    )
    for name, maker in MODELS.items():
        sealserve("models", "make", maker, str(plain[name]))

    step("2. ... and a wrap key per model, which only a verified TEE will ever receive")
    for name in MODELS:
        sealserve("keygen", "-w", str(keys[name]))

    step("3. Every file of every model is encrypted (Gramine's format) plus a manifest")
    for name in MODELS:
        sealserve(
            "encrypt", "-w", str(keys[name]), "-i", str(plain[name]), "-o", str(encrypted[name])
        )
    for name in MODELS:
        leaked = [
            p for p in encrypted[name].rglob("*") if p.is_file() and b"serving" in p.read_bytes()
        ]
        if leaked:
            raise DemoFailed(f"plaintext visible in {leaked[0]}")
    print("  (no file of the encrypted trees contains any of the models' plaintext)")
    for name in MODELS:
        sealserve("verify", "-w", str(keys[name]), str(encrypted[name]))

    step("4. Mutual-TLS certificates; the server's ssl.cfg is encrypted with half_plus_two's key")
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
        str(keys["half_plus_two"]),
    )

    step(
        "5. A key broker (KBS, SQLite) trusting a freshly made simulated TEE root: it will "
        "release a model key only to a server whose measured code and flags the owner pinned"
    )
    sealserve("sim", "init", str(work / "sim"))
    sealserve("kbs", "init", str(work / "kbs-keys"))
    kbs_tls = work / "kbs-tls"
    sealserve("certs", "oneway", "localhost", "-o", str(kbs_tls), "--san", "127.0.0.1")
    broker, listening = start_process(
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
            "0",  # a free port, which its first line names
            "--insecure-trust-sim-root",
            str(work / "sim"),
            # the CA of attested servers' TLS certificates (made by `kbs init`)
            "--server-ca-key",
            str(work / "kbs-keys" / "server-ca-key.pem"),
            "--server-ca-cert",
            str(work / "kbs-keys" / "server-ca.pem"),
        ],
        work / "kbs.log",
        ready=r"KBS listening on (?P<url>https://\S+)",
    )
    kbs_url = listening["url"]
    try:
        admin = [
            "--url",
            kbs_url,
            "--ca",
            str(kbs_tls / "server" / "cert.pem"),
            "--admin-token-file",
            str(work / "kbs-keys" / "admin.token"),
        ]
        # the server asks the KBS for the key of model NAME at sealserve/model-key/NAME
        resources = {name: f"sealserve/model-key/{name}" for name in MODELS}
        for name in MODELS:
            sealserve("kbs", "secret", "put", resources[name], "--file", str(keys[name]), *admin)
        model_config = work / "models.config"
        model_config.write_text(
            "model_config_list {\n"
            + "".join(
                f'  config {{ name: "{name}" base_path: "{encrypted[name].parent}" '
                f'model_platform: "{PLATFORMS.get(name, "tensorflow")}" }}\n'
                for name in MODELS
            )
            + "}\n"
        )
        print(f"  the server's {model_config} (TF Serving's ModelServerConfig):")
        print("    " + model_config.read_text().strip().replace("\n", "\n    "))
        flags = [
            f"--model_config_file={model_config}",
            "--port=0",  # free ports, which the server's start-up line names
            "--rest_api_port=0",
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
        for name in MODELS:
            sealserve("kbs", "policy", "set", resources[name], str(policy), *admin)

        step(
            "6. The server: the seed's tensorflow_model_server line with the program name "
            "changed, the three models in one --model_config_file, and no key file: it "
            "attests to the KBS, gets the models' keys (and the ssl.cfg's) and decrypts the "
            "models in memory only"
        )
        server, serving = start_process(
            ["serve", *flags],
            work / "server.log",
            ready=r"serving .*: gRPC on \S+:(?P<grpc>\d+), REST on port (?P<rest>\d+)",
        )
        grpc_port, rest_port = int(serving["grpc"]), int(serving["rest"])
        try:
            requester(work, certs, grpc_port, rest_port)

            step(
                "10. A new version encrypted under a key the server does not have is "
                "refused; version 1 keeps serving"
            )
            other_key = work / "keys" / "other.key"
            sealserve("keygen", "-w", str(other_key))
            staging = work / "staging"
            sealserve(
                "encrypt",
                "-w",
                str(other_key),
                "-i",
                str(plain["half_plus_two"]),
                "-o",
                str(staging),
            )
            staging.rename(encrypted["half_plus_two"].parent / "2")
            status = wait_for_failed_version(certs, rest_port, "2")
            print(f"  version 2: {status['state']}, {status['status']['error_message']}")
            print(f"  predictions still: {rest_predict(certs, rest_port, [1.0, 2.0, 5.0])}")
            shutil.rmtree(encrypted["half_plus_two"].parent / "2", ignore_errors=True)
            attested_requester(work, certs, flags, policy, admin, grpc_port)
        finally:
            stop_process(server)
        shutil.rmtree(encrypted["half_plus_two"].parent / "2", ignore_errors=True)

        step(
            "11. A second server started with modified code (one line added to a copy of the "
            "package, first on PYTHONPATH) and the very same flags measures differently, and "
            "refuses to start with unmeasured code ahead of the installed package"
        )
        refuse_modified_server(work, flags, mr_enclave)
        print("  the KBS's audit log (hash-chained) of its release decisions:")
        for line in sealserve("kbs", "audit", *admin, quiet=True).splitlines():
            if line.startswith("{") and '"release"' in line:
                record = json.loads(line)
                print(
                    f"    {record['decision']:8} {record['resource']:38} tee={record['tee']} "
                    f"mr_enclave={record['measurements'].get('mr_enclave', '')[:16]}… "
                    f"{record['reason']}"
                )
    finally:
        stop_process(broker)

    key = keys["half_plus_two"]
    step("12. Tampering is caught and named: a file swapped for another")
    tampered = work / "tampered" / "1"
    shutil.copytree(encrypted["half_plus_two"], tampered)
    index = tampered / "variables" / "variables.index"
    data = tampered / "variables" / "variables.data-00000-of-00001"
    index_bytes, data_bytes = index.read_bytes(), data.read_bytes()
    index.write_bytes(data_bytes)
    data.write_bytes(index_bytes)
    sealserve("verify", "-w", str(key), str(tampered), expect_failure=True)

    step("13. Rotating the wrap key rewrites only each file's 4 KiB metadata node")
    new_key = work / "keys" / "half_plus_two.next.key"
    sealserve("keygen", "-w", str(new_key))
    rotated = work / "rotated" / "half_plus_two" / "1"
    sealserve(
        "rekey",
        "-w",
        str(key),
        "--new-key",
        str(new_key),
        "-i",
        str(encrypted["half_plus_two"]),
        "-o",
        str(rotated),
    )
    sealserve("verify", "-w", str(new_key), str(rotated))

    step("14. The owner can always get the exact original back")
    decrypted = work / "decrypted"
    sealserve("decrypt", "-w", str(new_key), "-i", str(rotated), "-o", str(decrypted))
    if tree_digest(decrypted) != tree_digest(plain["half_plus_two"]):
        raise DemoFailed("decrypted tree differs from the original")
    print("  the decrypted tree is byte-identical to the original SavedModel")


def requester(work: Path, certs: Path, grpc_port: int, rest_port: int) -> None:
    tls = [
        "--ca",
        str(certs / "ca_cert.pem"),
        "--cert",
        str(certs / "client" / "cert.pem"),
        "--key",
        str(certs / "client" / "key.pem"),
    ]

    step("7. The requester predicts half_plus_two over REST and gRPC, both with mutual TLS")
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

    step(
        "8. The requester classifies the held-out digits (every fifth image of scikit-learn's "
        "set, never seen in training) over gRPC with mutual TLS"
    )
    import numpy as np

    from sealserve.tools.models import digits_dataset

    _, _, test_images, test_labels = digits_dataset()
    images = work / "requester" / "digits-test-images.npy"
    images.parent.mkdir(parents=True, exist_ok=True)
    np.save(images, test_images)
    np.save(images.with_name("digits-test-labels.npy"), test_labels)
    answer = sealserve(
        "predict",
        "--grpc",
        f"localhost:{grpc_port}",
        "-m",
        "digits",
        "--npy",
        f"image={images}",
        *tls,
        quiet=True,
    )
    classes = np.asarray(json.loads(answer)["outputs"]["classes"], dtype=np.int64)
    if classes.shape != test_labels.shape:
        raise DemoFailed(f"{classes.shape[0]} classes for {test_labels.shape[0]} images")
    correct = int((classes == test_labels).sum())
    accuracy = correct / len(test_labels)
    print(f"  classes: {classes[:20].tolist()} … (labels: {test_labels[:20].tolist()} …)")
    print(f"  accuracy on {len(test_labels)} held-out digits: {accuracy:.3f} ({correct} correct)")
    if accuracy < MIN_DIGITS_ACCURACY:
        raise DemoFailed(f"digits accuracy {accuracy:.3f} is below {MIN_DIGITS_ACCURACY}")

    step(
        "9. The requester runs the benchmark client (the seed's resnet_client_grpc) on "
        "ResNet-50 over gRPC with mutual TLS"
    )
    sealserve(
        "client",
        "-url",
        f"localhost:{grpc_port}",
        "-ca",
        str(certs / "ca_cert.pem"),
        "-crt",
        str(certs / "client" / "cert.pem"),
        "-key",
        str(certs / "client" / "key.pem"),
        "--model_name",
        "resnet50-v15-fp32",
        *BENCHMARK_FLAGS,
    )


def attested_requester(
    work: Path, certs: Path, flags: list[str], policy: Path, admin: list[str], plain_grpc: int
) -> None:
    """Issue #16 in the demo: the requester checks the server's attestation before sending
    anything; a server without it is refused; a revoked key unloads its model."""
    server_ca = work / "kbs-keys" / "server-ca.pem"
    mine = [
        "--cert",
        str(certs / "client" / "cert.pem"),
        "--key",
        str(certs / "client" / "key.pem"),
        "--verify-server",
        str(policy),
        "--server-ca",
        str(server_ca),
    ]
    step(
        "10b. The requester verifies the server before sending a byte: this server shows "
        "the owner's ordinary certificate, no attestation, so nothing is sent to it"
    )
    sealserve(
        "predict",
        "--grpc",
        f"127.0.0.1:{plain_grpc}",
        "-m",
        "half_plus_two",
        "--json",
        '{"instances": [1.0]}',
        *mine,
        expect_failure=True,
    )  # fmt: skip  (it prints the refusal)

    step(
        "10c. An attested server: its TLS key made in memory, its certificate issued by the "
        "KBS over its attested session (claims inside, renewed before expiry); the owner "
        "lends half_plus_two's key on a 4 s lease"
    )
    attested_flags = [
        f for f in flags if not f.startswith(("--model_config_file", "--file_system_poll"))
    ] + [
        "--model_name=half_plus_two",
        f"--model_base_path={work / 'models' / 'half_plus_two'}",
        "--key_broker_tls_name=demo-server",
    ]
    measured = sealserve("measure", *attested_flags, quiet=True).strip()
    both = policy.read_text().replace('mr_enclave = ["', f'mr_enclave = ["{measured}", "')
    leased = work / "policy-leased.toml"
    leased.write_text("key_lease_seconds = 4\n" + both)
    sealserve("kbs", "policy", "set", "sealserve/model-key/half_plus_two", str(leased), *admin)
    sealserve("kbs", "policy", "set", "sealserve/tls-cert/demo-server", str(leased), *admin)
    attested, serving = start_process(
        ["serve", *attested_flags],
        work / "attested-server.log",
        ready=r"serving .*: gRPC on \S+:(?P<grpc>\d+), REST on port (?P<rest>\d+)",
    )
    try:
        grpc_port, rest_port = int(serving["grpc"]), int(serving["rest"])
        requester_policy = work / "requester-policy.toml"
        requester_policy.write_text(both)
        mine[mine.index(str(policy))] = str(requester_policy)
        answer = sealserve(
            "predict", "--grpc", f"127.0.0.1:{grpc_port}", "-m", "half_plus_two",
            "--json", '{"instances": [1.0, 2.0, 5.0]}', *mine,
        )  # fmt: skip
        print(f"  verified, then predicted: {' '.join(answer.split())}")

        step("10d. The owner revokes half_plus_two's key: the server unloads it within the lease")
        sealserve("kbs", "secret", "revoke", "sealserve/model-key/half_plus_two", *admin)
        status = wait_for_end(certs, rest_port, "half_plus_two", server_ca)
        print(f"  half_plus_two: {status['state']}, {status['status']['error_message']}")
    finally:
        stop_process(attested)


def wait_for_end(certs: Path, port: int, model: str, server_ca: Path) -> dict[str, Any]:
    """The model's status once it has ended (its key revoked), from the attested server."""
    context = ssl.create_default_context(cafile=str(server_ca))
    context.check_hostname = False  # the KBS certified "demo-server"; the CA is what counts
    context.load_cert_chain(str(certs / "client" / "cert.pem"), str(certs / "client" / "key.pem"))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        url = f"https://127.0.0.1:{port}/v1/models/{model}"
        with urllib.request.urlopen(url, context=context, timeout=10) as answer:
            status: dict[str, Any] = json.loads(answer.read())["model_version_status"][0]
        if status["state"] == "END":
            return status
        time.sleep(0.5)
    raise DemoFailed(f"{model} was still served a minute after its key was revoked")


def refuse_modified_server(work: Path, flags: list[str], mr_enclave: str) -> None:
    """Serve with a copy of the installed package that has one line added (first on
    PYTHONPATH) and the same flags: it measures differently, and the server refuses to
    start with unmeasured code ahead of the installed package."""
    import sealserve as package

    installed = Path(package.__file__).resolve().parent
    modified = work / "modified-code"
    loader = modified / "sealserve" / "serving" / "loader.py"
    line = "# a line the model owner never reviewed"
    print(
        f"$ cp -r {shlex.quote(str(display_path(installed)))} {modified}/ && "
        f"echo '{line}' >> {loader}"
    )
    shutil.copytree(
        installed,
        modified / "sealserve",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    with open(loader, "a") as f:
        f.write(f"\n{line}\n")
    env = {"PYTHONPATH": str(modified)}
    other = sealserve("measure", *flags, env=env, quiet=True).strip()
    print(f"  mr_enclave {other[:16]}… instead of the pinned {mr_enclave[:16]}…")
    if other == mr_enclave:
        raise DemoFailed("the modified code measures the same")
    said = sealserve("serve", *flags, env=env, expect_failure=True, timeout=120)
    print(f"  {said.strip().splitlines()[-1]}")
    # PYTHONPATH puts unmeasured code first: the server refuses before asking the KBS
    if "runs only measured code" not in said:
        raise DemoFailed("the modified server started")


def display_path(path: Path) -> Path:
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


def start_process(
    args: list[str], log_path: Path, ready: str
) -> tuple[subprocess.Popen[bytes], re.Match[str]]:
    """Start `sealserve` in the background; return it once a line of its output matches
    the regular expression `ready` (the line that names the ports it bound), with the match."""
    print("$ sealserve " + " ".join(shlex.quote(a) for a in args), flush=True)
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen([SEALSERVE, *args], stdout=log_file, stderr=log_file)
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        found = re.search(ready, text)
        if found:
            line = text[text.rfind("\n", 0, found.start()) + 1 :].split("\n", 1)[0]
            print("  " + line)
            return process, found
        if process.poll() is not None:
            raise DemoFailed(f"the server exited: {text.strip()}")
        time.sleep(0.2)
    stop_process(process)
    raise DemoFailed(f"`sealserve {args[0]}` did not start within {START_SECONDS} s")


def stop_process(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
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


def wait_for_failed_version(certs: Path, port: int, version: str) -> dict[str, Any]:
    """The status of a version of half_plus_two once it has ended."""
    url = f"https://localhost:{port}/v1/models/half_plus_two"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with urllib.request.urlopen(url, timeout=30, context=tls_context(certs)) as response:
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
