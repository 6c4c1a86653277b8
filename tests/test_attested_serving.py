"""The owner → KBS → server flow through the real commands: the model's key is released only
to a server whose (simulated) measurement is the one the owner pinned in the KBS policy."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from sealserve.model_tree import encrypt_tree
from sealserve.tools.certs import make_oneway
from tests.harness import SEALSERVE, KbsProcess, ServeProcess


def sealserve(*args: object) -> str:
    result = subprocess.run(
        [SEALSERVE, *map(str, args)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def broker(tmp_path_factory, half_plus_two):
    root = tmp_path_factory.mktemp("attested")
    sealserve("sim", "init", root / "sim")
    sealserve("kbs", "init", root / "kbs")
    tls = make_oneway("localhost", root / "kbs-tls", sans=["127.0.0.1"])
    process = KbsProcess(
        [
            SEALSERVE,
            "kbs",
            "serve",
            "--db",
            root / "kbs.db",
            "--master-key",
            root / "kbs" / "master.key",
            "--signing-key",
            root / "kbs" / "signing-key.pem",
            "--admin-token-file",
            root / "kbs" / "admin.token",
            "--insecure-trust-sim-root",
            root / "sim",
            "--tls-cert",
            tls.server_cert,
            "--tls-key",
            tls.server_key,
            "--port",
            "0",
        ]
    )
    key = root / "model.key"
    sealserve("keygen", "-w", key)
    encrypt_tree(half_plus_two, str(root / "models" / "hpt" / "1"), key.read_bytes())
    url = process.url
    admin = [
        "--url",
        url,
        "--ca",
        tls.server_cert,
        "--admin-token-file",
        root / "kbs" / "admin.token",
    ]
    sealserve("kbs", "secret", "put", "sealserve/model-key/hpt", "--file", key, *admin)
    yield {"root": root, "url": url, "ca": tls.server_cert, "admin": admin}
    process.stop()


def serve_flags(broker, *extra: str) -> list[str]:
    root = broker["root"]
    return [
        "--model_name=hpt",
        f"--model_base_path={root / 'models' / 'hpt'}",
        "--port=0",  # ports the system picks: the measurement stays the same from run to run
        "--rest_api_port=0",
        "--bind_address=127.0.0.1",
        f"--key_broker={broker['url']}",
        f"--key_broker_ca={broker['ca']}",
        "--attestation=sim",
        f"--sim_dir={root / 'sim'}",
        *extra,
    ]


def model_status(port: int, model: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models/{model}") as response:
        return json.loads(response.read())["model_version_status"][0]


def test_the_key_goes_only_to_the_measured_server(broker):
    flags = serve_flags(broker)
    mr_enclave = sealserve("measure", *flags).strip()
    assert len(mr_enclave) == 64
    policy = broker["root"] / "policy.toml"
    policy.write_text(
        f'tee = ["sim"]\n[[sim]]\nmr_enclave = ["{mr_enclave}"]\n'
        'mr_signer = "any"\nisv_prod_id = [0]\n'
    )
    sealserve("kbs", "policy", "set", "sealserve/model-key/hpt", policy, *broker["admin"])

    server = ServeProcess(*flags)  # started: the first load of each version is over
    try:
        assert model_status(server.rest_port, "hpt")["state"] == "AVAILABLE"
        request = urllib.request.Request(
            f"http://127.0.0.1:{server.rest_port}/v1/models/hpt:predict",
            method="POST",
            data=json.dumps({"instances": [1.0, 2.0, 5.0]}).encode(),
        )
        with urllib.request.urlopen(request) as response:
            assert json.loads(response.read()) == {"predictions": [2.5, 3.0, 4.5]}
    finally:
        server.stop()

    # a server launched differently has another measurement: the KBS refuses it, tells the
    # server only that its policy denied it, and tells the administrator why (the audit);
    # with nothing to serve, the server exits and says why (as tensorflow_model_server)
    tampered = subprocess.run(
        [SEALSERVE, "serve", *serve_flags(broker, "--enable_model_warmup=false")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert tampered.returncode == 3, tampered.stderr
    (reason, _) = [x for x in tampered.stderr.splitlines() if x.startswith("sealserve: error:")]
    assert reason.startswith("sealserve: error: model hpt: version 1 failed to load: ")
    assert "denied this TEE" in reason and "mr_enclave" not in reason
    assert "Traceback" not in tampered.stderr
    # --allow_unavailable_models: it stays up, the denial in the model's status
    tampered = ServeProcess(
        *serve_flags(broker, "--enable_model_warmup=false", "--allow_unavailable_models")
    )
    try:
        status = model_status(tampered.rest_port, "hpt")
        assert status["state"] == "END"
        assert status["status"]["error_code"] == "PERMISSION_DENIED"
        assert "denied this TEE" in status["status"]["error_message"]
        assert "mr_enclave" not in status["status"]["error_message"]
    finally:
        tampered.stop()

    audit = sealserve("kbs", "audit", "--resource", "sealserve/model-key/hpt", *broker["admin"])
    assert "allowed" in audit and "denied" in audit and "mr_enclave" in audit


def pin_measurement(broker, flags: list[str], env: dict[str, str] | None = None) -> str:
    """Measure `sealserve serve` with these flags and make it the only one the KBS serves."""
    mr_enclave = sealserve("measure", *flags).strip()
    policy = broker["root"] / "policy.toml"
    policy.write_text(
        f'tee = ["sim"]\n[[sim]]\nmr_enclave = ["{mr_enclave}"]\n'
        'mr_signer = "any"\nisv_prod_id = [0]\n'
    )
    sealserve("kbs", "policy", "set", "sealserve/model-key/hpt", policy, *broker["admin"])
    return mr_enclave


# Code the host puts first on PYTHONPATH: it runs before sealserve (Python imports
# sitecustomize at start-up) and writes down every model key the server is given.
SPY = """
import importlib.machinery, os, sys

HERE = os.path.dirname(os.path.abspath(__file__))
open(os.path.join(HERE, "ran"), "w").close()


class Spy:
    def find_spec(self, name, path=None, target=None):
        if name != "sealserve.serving.keys":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            for provider in vars(module).values():
                key_for = getattr(provider, "key_for", None)
                if isinstance(provider, type) and key_for is not None:
                    def spy(self, name, _key_for=key_for):
                        key = _key_for(self, name)
                        with open(os.path.join(HERE, "leaked"), "a") as f:
                            f.write(name + "=" + bytes(key).hex() + "\\n")
                        return key
                    provider.key_for = spy

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, Spy())
"""


def test_code_on_pythonpath_is_refused_before_any_key(broker, tmp_path):
    """#12 §3: a sitecustomize.py on PYTHONPATH ran inside the measured server, with an
    unchanged measurement, and saw the released key. Now it changes the measurement and
    the attested server refuses to start before asking for a key."""
    flags = serve_flags(broker)
    clean = pin_measurement(broker, flags)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SPY)
    env = {**os.environ, "PYTHONPATH": str(hook)}

    measured = subprocess.run(
        [SEALSERVE, "measure", *flags], env=env, capture_output=True, text=True, timeout=120
    )
    assert measured.returncode == 0 and measured.stdout.strip() != clean
    assert "refuses to start in this environment: environment variable PYTHONPATH" in (
        measured.stderr
    )
    (hook / "ran").unlink()

    server = subprocess.Popen(
        [SEALSERVE, "serve", *flags], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while server.poll() is None and not (hook / "leaked").exists():
            assert time.monotonic() < deadline, "the server neither refused nor got a key"
            time.sleep(0.2)
    finally:
        if server.poll() is None:
            server.kill()
        _, stderr = server.communicate(timeout=60)
    assert (hook / "ran").exists()  # the planted code did run: Python starts it first
    assert not (hook / "leaked").exists(), "the planted code saw a model key"
    assert server.returncode != 0
    lines = stderr.strip().splitlines()
    assert lines[-1].startswith(
        "sealserve: error: an attested server runs only measured code, and environment "
        f"variable PYTHONPATH is set; sys.path entry {hook} is outside the measured installation"
    ), stderr
    assert "Traceback" not in stderr


def test_an_attested_server_cannot_dump_core(broker):
    """#12 §5: RLIMIT_CORE 0 (soft and hard) and not dumpable, on the running server."""
    flags = serve_flags(broker)
    pin_measurement(broker, flags)
    server = ServeProcess(*flags)
    try:
        assert model_status(server.rest_port, "hpt")["state"] == "AVAILABLE"
        pid = server.process.pid
        limits = Path(f"/proc/{pid}/limits").read_text()
        core = next(line for line in limits.splitlines() if line.startswith("Max core file size"))
        assert core.split()[4:6] == ["0", "0"], core
        if os.geteuid() != 0:  # a non-dumpable process's /proc files belong to root
            assert Path(f"/proc/{pid}/status").stat().st_uid == 0
    finally:
        server.stop()
    # what prctl(PR_GET_DUMPABLE) said inside the server once it was set up
    assert "attested: core dumps off (RLIMIT_CORE 0/0, dumpable False)" in server.stderr


def test_the_files_the_flags_name_are_measured(broker, tmp_path):
    """The model list and the KBS's CA are measured by content, not only by path: a host that
    rewrites them in place gets another measurement (so no key)."""
    root = broker["root"]
    models, ca = tmp_path / "models.config", tmp_path / "kbs-ca.pem"
    models.write_text(
        f"model_config_list {{ config {{ name: 'hpt' base_path: '{root / 'models' / 'hpt'}' }} }}"
    )
    ca.write_bytes(Path(broker["ca"]).read_bytes())
    flags = [
        f"--model_config_file={models}",
        f"--key_broker={broker['url']}",
        f"--key_broker_ca={ca}",
        "--attestation=sim",
        f"--sim_dir={root / 'sim'}",
    ]
    first = sealserve("measure", *flags)
    assert sealserve("measure", *flags) == first
    models.write_text(models.read_text().replace("'hpt'", "'other'", 1))
    second = sealserve("measure", *flags)
    assert second != first
    ca.write_bytes(make_oneway("evil", tmp_path / "evil").server_cert.read_bytes())
    assert sealserve("measure", *flags) not in (first, second)


def test_an_attested_server_does_not_poll_its_measured_model_config(broker):
    result = subprocess.run(
        [
            SEALSERVE,
            "serve",
            *serve_flags(broker),
            "--model_config_file_poll_wait_seconds=5",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "--model_config_file is measured, so it is not polled" in result.stderr


def test_attest_tools_from_the_shell(broker, tmp_path):
    root = broker["root"]
    quote = tmp_path / "quote.bin"
    sealserve(
        "attest",
        "quote",
        "--attester",
        "sim",
        "--sim-dir",
        root / "sim",
        "--report-data",
        "48656c6c6f",
        "-o",
        quote,
    )
    claims = json.loads(
        sealserve(
            "attest",
            "verify",
            "--quote",
            quote,
            "--collateral",
            root / "sim" / "collateral.json",
            "--root-ca",
            root / "sim" / "root_ca.der",
        )
    )["claims"]
    assert claims["tee"] == "sim" and claims["report_data"].startswith("48656c6c6f")
    # the same quote is not genuine under Intel's root
    result = subprocess.run(
        [
            SEALSERVE,
            "attest",
            "verify",
            "--quote",
            quote,
            "--collateral",
            root / "sim" / "collateral.json",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "verification failed" in result.stderr
