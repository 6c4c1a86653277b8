"""`sealserve serve` as an operator sees it, as tensorflow_model_server behaves: a start whose
initial models fail to load exits with a code of its own and one line per failed model
(`--allow_unavailable_models` keeps the server up instead); the lifecycle lines are INFO and
shown by default (`--log_level=warning` quiets them); our commands keep TensorFlow's start-up
noise off the terminal."""

from __future__ import annotations

import json
import re
import shutil
import socket
import ssl
import subprocess
import urllib.request

import pytest

from sealserve.model_tree import encrypt_tree
from sealserve.tools.certs import make_oneway
from tests.harness import SEALSERVE, ServeProcess, mutual_tls_server

EXIT_MODELS_UNAVAILABLE = 3  # documented in docs/serving.md
GUARD_SECONDS = 300  # only so that a broken server cannot hang the suite

#: what TensorFlow, absl, oneDNN and CUDA print on their own at start-up, when let through
TF_NOISE = re.compile(
    r"oneDNN|cuda|cuDNN|cpu_feature_guard|This TensorFlow binary|absl::|"
    r"^[IWE]\d{4} \d\d:\d\d:\d\d|^WARNING: All log messages before absl",
    re.IGNORECASE | re.MULTILINE,
)


@pytest.fixture
def good_and_broken(tmp_path, half_plus_two):
    """A model config with `good` (plain) and `broken` (encrypted under another key than
    its --model_key), and that flag."""
    shutil.copytree(half_plus_two, tmp_path / "models" / "good" / "1")
    encrypt_tree(half_plus_two, str(tmp_path / "models" / "broken" / "1"), bytes(16))
    key = tmp_path / "broken.key"
    key.write_bytes(bytes(range(16)))
    key.chmod(0o600)
    config = tmp_path / "models.config"
    config.write_text(
        "model_config_list {\n"
        + "".join(
            f"  config {{ name: '{name}' base_path: '{tmp_path / 'models' / name}' "
            "model_platform: 'tensorflow' }\n"
            for name in ("good", "broken")
        )
        + "}\n"
    )
    return [f"--model_config_file={config}", f"--model_key=broken={key}"]


def serve(*args: object) -> subprocess.CompletedProcess[str]:
    """`sealserve serve ARGS` on free loopback ports, to its exit."""
    return subprocess.run(
        [SEALSERVE, "serve", "--port=0", "--rest_api_port=0", "--bind_address=127.0.0.1"]
        + [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=GUARD_SECONDS,
    )


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("sealserve: error:")]


def test_a_model_failing_its_initial_load_stops_the_start_with_one_line_per_model(
    good_and_broken,
):
    ran = serve(*good_and_broken)
    assert ran.returncode == EXIT_MODELS_UNAVAILABLE, ran.stderr
    assert "Traceback" not in ran.stderr
    assert "sealserve: INFO: serving" not in ran.stderr  # no port was opened
    first, summary = errors(ran.stderr)
    assert first.startswith(
        "sealserve: error: model broken: version 1 failed to load: authentication failed"
    )
    assert "1 model(s) failed to load, not serving (--allow_unavailable_models" in summary
    said_once_then_summary(ran.stderr, "authentication failed")


def said_once_then_summary(stderr: str, reason: str) -> None:
    """The per-model reason appears once, its last lines are it and the summary, and nothing
    claims a shutdown of a server that never started."""
    lines = stderr.splitlines()
    assert sum(reason in line for line in lines) == 1, stderr
    assert reason in lines[-2] and "model(s) failed to load" in lines[-1], stderr
    assert "shutting down" not in stderr, stderr


def test_allow_unavailable_models_serves_the_others_and_reports_the_failure(good_and_broken):
    server = ServeProcess(
        *good_and_broken, "--allow_unavailable_models", "--bind_address=127.0.0.1"
    )
    try:
        base = f"http://127.0.0.1:{server.rest_port}/v1/models"
        request = urllib.request.Request(
            f"{base}/good:predict", data=json.dumps({"instances": [1.0]}).encode()
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            assert json.loads(answer.read()) == {"predictions": [2.5]}
        with urllib.request.urlopen(f"{base}/broken", timeout=30) as answer:
            (status,) = json.loads(answer.read())["model_version_status"]
        assert status["state"] == "END"
        assert status["status"]["error_code"] == "DATA_LOSS"
    finally:
        code = server.stop()
    assert code == 0, server.stderr
    assert "model broken is not available (serving anyway)" in server.stderr
    # said once, in that warning, not also as a load error
    assert server.stderr.count("authentication failed") == 1, server.stderr


def test_a_key_broker_unreachable_at_start_is_retried_then_the_start_fails(tmp_path, half_plus_two):
    subprocess.run([SEALSERVE, "sim", "init", str(tmp_path / "sim")], check=True, timeout=120)
    encrypt_tree(half_plus_two, str(tmp_path / "models" / "m" / "1"), bytes(16))
    tls = make_oneway("localhost", tmp_path / "kbs-tls", sans=["127.0.0.1"])
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]  # nothing listens there once closed
    ran = serve(
        "--model_name=m",
        f"--model_base_path={tmp_path / 'models' / 'm'}",
        f"--key_broker=https://127.0.0.1:{port}",
        f"--key_broker_ca={tls.server_cert}",
        "--attestation=sim",
        f"--sim_dir={tmp_path / 'sim'}",
        "--max_num_load_retries=1",
        "--load_retry_interval_micros=100000",
    )
    assert ran.returncode == EXIT_MODELS_UNAVAILABLE, ran.stderr
    assert "Traceback" not in ran.stderr
    assert "load attempt 1 failed" in ran.stderr and "retrying" in ran.stderr
    first, _ = errors(ran.stderr)
    assert first.startswith("sealserve: error: model m: version 1 failed to load: key broker")
    assert "unavailable" in first
    said_once_then_summary(ran.stderr, "version 1 failed to load")


def test_lifecycle_lines_are_info_and_shown_by_default(tmp_path, half_plus_two):
    shutil.copytree(half_plus_two, tmp_path / "m" / "1")
    server = ServeProcess(
        "--model_name=m", f"--model_base_path={tmp_path / 'm'}", "--bind_address=127.0.0.1"
    )
    assert server.stop() == 0, server.stderr
    lines = server.stderr.splitlines()
    for expected in (
        "sealserve: INFO: model m version 1 loading",
        "sealserve: INFO: model m version 1 is available",
        "sealserve: INFO: serving m: gRPC on 127.0.0.1:",
        "sealserve: INFO: shutting down",
        "sealserve: INFO: model m version 1 unloaded",
    ):
        assert any(line.startswith(expected) for line in lines), (expected, server.stderr)
    assert not [line for line in lines if "WARNING" in line], server.stderr
    assert not TF_NOISE.search(server.stderr), server.stderr


def test_log_level_warning_quiets_the_lifecycle_lines(good_and_broken):
    ran = serve(*good_and_broken, "--log_level=warning")
    assert ran.returncode == EXIT_MODELS_UNAVAILABLE, ran.stderr
    assert "INFO" not in ran.stderr, ran.stderr
    # the problem is still said (once, by the failed start), only the lifecycle lines go
    assert "sealserve: error: model broken: version 1 failed to load" in ran.stderr
    said_once_then_summary(ran.stderr, "authentication failed")


def test_our_commands_keep_tensorflows_start_up_noise_off_the_terminal(tmp_path):
    made = subprocess.run(
        [SEALSERVE, "models", "make", "half_plus_two", str(tmp_path / "m" / "1")],
        capture_output=True,
        text=True,
        timeout=GUARD_SECONDS,
    )
    assert made.returncode == 0, made.stderr
    measured = subprocess.run(
        [SEALSERVE, "measure", "--model_name=m", f"--model_base_path={tmp_path / 'm'}"],
        capture_output=True,
        text=True,
        timeout=GUARD_SECONDS,
    )
    assert measured.returncode == 0, measured.stderr
    server = ServeProcess(
        "--model_name=m", f"--model_base_path={tmp_path / 'm'}", "--bind_address=127.0.0.1"
    )
    try:
        predicted = subprocess.run(
            [
                SEALSERVE,
                "predict",
                f"--grpc=127.0.0.1:{server.grpc_port}",
                "-m",
                "m",
                "--json",
                "[1.0]",
            ],
            capture_output=True,
            text=True,
            timeout=GUARD_SECONDS,
        )
        benchmarked = subprocess.run(
            [
                SEALSERVE,
                "client",
                f"-url=127.0.0.1:{server.grpc_port}",
                "--model_name=m",
                "--input_name=x",
                "--shape=",
                "-cnum=1",
                "-loop=2",
                "--warmup=0",
                "-q",
            ],
            capture_output=True,
            text=True,
            timeout=GUARD_SECONDS,
        )
    finally:
        assert server.stop() == 0, server.stderr
    for ran in (made, measured, predicted, benchmarked):
        assert not TF_NOISE.search(ran.stdout + ran.stderr), (ran.args, ran.stdout, ran.stderr)
    assert not TF_NOISE.search(server.stderr), server.stderr


def test_a_client_without_a_certificate_reads_certificate_required_and_the_log_stays_clean(
    tmp_path, half_plus_two
):
    """The real server over mutual TLS: a raw TLS 1.3 client without a certificate reads the
    REST port's `certificate_required` alert; refused gRPC handshakes add no gRPC C-core lines
    to the server's log."""
    server, certs = mutual_tls_server(tmp_path, half_plus_two)
    try:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(str(certs.ca_cert))
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        for port in (server.rest_port, server.grpc_port):
            with (
                pytest.raises((ssl.SSLError, ConnectionError)) as refused,
                socket.create_connection(("127.0.0.1", port), timeout=30) as raw,
                context.wrap_socket(raw, server_hostname="localhost") as tls,
            ):
                tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
                if not tls.recv(1):  # gRPC's TLS closes without its alert
                    raise ConnectionError("closed without an alert")
            if port == server.rest_port:
                assert getattr(refused.value, "reason", "") == "TLSV13_ALERT_CERTIFICATE_REQUIRED"
    finally:
        assert server.stop() == 0, server.stderr
    assert not TF_NOISE.search(server.stderr), server.stderr
