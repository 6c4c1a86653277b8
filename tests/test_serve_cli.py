"""`sealserve serve` as a user launches it: the seed's tensorflow_model_server line with only
the program name changed, then a clean shutdown on SIGTERM."""

from __future__ import annotations

import json
import ssl
import subprocess
import urllib.request

import pytest

from sealserve.model_tree import encrypt_tree
from sealserve.tools.certs import make_oneway, make_twoway
from tests.harness import SEALSERVE, ServeProcess


def test_the_seeds_launch_line(tmp_path, half_plus_two):
    model = "half_plus_two"
    key = tmp_path / "wrap-key"
    key.write_bytes(bytes(range(16)))
    key.chmod(0o600)
    encrypt_tree(half_plus_two, str(tmp_path / "models" / model / "1"), key.read_bytes())
    certs = make_twoway(
        "localhost",
        "client.local",
        tmp_path / "ssl_configure",
        encrypt_ssl_cfg_key=key.read_bytes(),
    )
    batching = tmp_path / "batching.cfg"
    batching.write_text("max_batch_size { value: 8 }\n")
    server = ServeProcess(
        f"--model_name={model}",
        f"--model_base_path={tmp_path / 'models' / model}",
        "--port=0",  # the system picks the ports; the start-up line says which
        "--rest_api_port=0",
        "--enable_model_warmup=true",
        f"--ssl_config_file={certs.ssl_config}",
        "--enable_batching=true",
        f"--batching_parameters_file={batching}",
        "--tensorflow_intra_op_parallelism=2",
        "--tensorflow_inter_op_parallelism=2",
        "--file_system_poll_wait_seconds=5",
        f"--model_key={model}={key}",
        "--bind_address=127.0.0.1",
    )
    try:
        context = ssl.create_default_context(cafile=str(certs.ca_cert))
        context.load_cert_chain(str(certs.client_cert), str(certs.client_key))
        request = urllib.request.Request(
            f"https://localhost:{server.rest_port}/v1/models/{model}:predict",
            method="POST",
            data=json.dumps({"instances": [1.0, 2.0, 5.0]}).encode(),
        )
        with urllib.request.urlopen(request, context=context) as response:
            assert json.loads(response.read()) == {"predictions": [2.5, 3.0, 4.5]}
    finally:
        code = server.stop()
    log = server.stderr
    assert code == 0, log
    assert "Traceback" not in log
    assert "cudart_stub" not in log  # TensorFlow's start-up noise stays out of the log
    assert f"serving {model}: gRPC on 127.0.0.1:{server.grpc_port}" in log
    assert "mutual TLS" in log


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["serve"], "give --model_base_path"),
        (["serve", "--model_base_path=/nonexistent/m"], "base path /nonexistent/m not found"),
        (["serve", "--model_base_path=/tmp", "--model_key=oops"], "--model_key must be NAME=PATH"),
        (["serve", "--model_config_file=/nonexistent.cfg"], "model config file /nonexistent.cfg"),
        (
            ["serve", "--model_base_path=/tmp", "--enable_model_warmup=maybe"],
            "expected true or false",
        ),
        (
            ["serve", "--model_base_path=/tmp", "--admin_client_cert_sha256=zz"],
            "takes a SHA-256 certificate fingerprint (64 hex digits",
        ),
        (
            ["serve", "--model_base_path=/tmp", f"--admin_client_cert_sha256={'ab' * 32}"],
            "--admin_client_cert_sha256 and --admin_client_ca need mutual TLS",
        ),
        (
            ["serve", "--model_base_path=/tmp", "--admin_client_ca=/etc/passwd"],
            "--admin_client_ca /etc/passwd is not PEM certificate text",
        ),
        (
            ["serve", "--model_base_path=/tmp", "--admin_base_path_root=models"],
            "--admin_base_path_root must be an absolute path",
        ),
        (["serve", "--model_base_path=/tmp", "--require_client_cert"], "needs --ssl_config_file"),
        (
            ["serve", "--model_base_path=/tmp", "--runtime=openvino:int3"],
            "unknown openvino option 'int3'",
        ),
    ],
)
def test_bad_launch_lines_fail_with_one_clear_line(argv, message):
    result = subprocess.run(
        [SEALSERVE, *argv, "--port=0"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_swapped_ssl_config_stops_the_start_up(tmp_path, half_plus_two):
    """#12 §3: the host replaces the protected ssl.cfg with an older one-way one under the same
    key (bound to the same path), or with another protected file under that key."""
    key = tmp_path / "wrap-key"
    key.write_bytes(bytes(range(16)))
    key.chmod(0o600)
    encrypt_tree(half_plus_two, str(tmp_path / "models" / "hpt" / "1"), key.read_bytes())
    current = make_twoway(
        "localhost", "client.local", tmp_path / "tls", encrypt_ssl_cfg_key=key.read_bytes()
    )
    path = current.ssl_config
    older = make_oneway(
        "localhost",
        tmp_path / "older",
        encrypt_ssl_cfg_key=key.read_bytes(),
        ssl_cfg_bound_path=str(path),
    )
    elsewhere = make_oneway("localhost", tmp_path / "other", encrypt_ssl_cfg_key=key.read_bytes())
    launch = [
        SEALSERVE,
        "serve",
        "--model_name=hpt",
        f"--model_base_path={tmp_path / 'models' / 'hpt'}",
        f"--model_key=hpt={key}",
        f"--ssl_config_file={path}",
        "--require_client_cert",
        "--port=0",
    ]
    for swapped, message in (
        (older.ssl_config, "does not require client certificates (client_verify is false)"),
        (elsewhere.ssl_config, f"was encrypted for '{elsewhere.ssl_config}', not for this path"),
    ):
        path.write_bytes(swapped.read_bytes())
        result = subprocess.run(launch, capture_output=True, text=True, timeout=120)
        assert result.returncode != 0
        assert message in result.stderr
        assert "Traceback" not in result.stderr
