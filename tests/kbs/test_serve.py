"""`sealserve kbs serve` as a process: built from its files, real clock, HTTPS, SIGTERM; and
the layering and no-secret-in-logs rules."""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from sealserve.attestation.sim import SimAttester, init_sim
from sealserve.kbs import cli
from sealserve.kbs.client import KbsKeyProvider
from sealserve.tools.certs import make_oneway
from tests.harness import KbsProcess
from tests.kbs.conftest import MR_ENCLAVE, POLICY, SECRET, SVN, Kbs

_MAIN = (
    "import argparse, sys\n"
    "from sealserve.kbs import cli\n"
    "parser = argparse.ArgumentParser()\n"
    "cli.add_arguments(parser)\n"
    "sys.exit(cli.run(parser.parse_args(sys.argv[1:])))\n"
)


def test_serve_process_releases_a_key(tmp_path: Path) -> None:
    sim_dir = tmp_path / "sim"
    init_sim(sim_dir)  # the real clock: the process verifies at the current time
    keys = tmp_path / "keys"
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    assert cli.run(parser.parse_args(["init", str(keys)])) == 0
    certs = make_oneway("localhost", tmp_path / "tls", sans=["127.0.0.1"])
    proc = KbsProcess(
        [
            sys.executable,
            "-c",
            _MAIN,
            "serve",
            "--db",
            str(tmp_path / "kbs.db"),
            "--master-key",
            str(keys / "master.key"),
            "--signing-key",
            str(keys / "signing-key.pem"),
            "--admin-token-file",
            str(keys / "admin.token"),
            "--insecure-trust-sim-root",
            str(sim_dir),
            "--tls-cert",
            str(certs.server_cert),
            "--tls-key",
            str(certs.server_key),
            "--port",
            "0",
        ]
    )
    try:
        url = proc.url
        assert url.startswith("https://127.0.0.1:") and proc.port != 0  # the bound port
        admin = ["--url", url, "--ca", str(certs.trust_anchor)]
        admin += ["--admin-token-file", str(keys / "admin.token")]
        secret = tmp_path / "model.key"
        secret.write_bytes(SECRET)
        policy = tmp_path / "policy.toml"
        policy.write_text(POLICY)
        resource = "sealserve/model-key/served"
        cli.run(parser.parse_args(["secret", "put", resource, "--file", str(secret), *admin]))
        cli.run(parser.parse_args(["policy", "set", resource, str(policy), *admin]))
        attester = SimAttester(sim_dir, mr_enclave=MR_ENCLAVE, isv_svn=SVN)
        provider = KbsKeyProvider(url, str(certs.trust_anchor), attester)
        assert provider.key_for("served") == SECRET
    finally:
        proc.stop()
    stderr = proc.stderr
    assert proc.returncode == 0, stderr
    assert "insecure_trust_sim_root" in stderr  # the warning is logged
    assert SECRET.hex() not in stderr and repr(SECRET) not in stderr


def test_no_secret_in_logs(
    kbs: Kbs, attester: SimAttester, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    assert KbsKeyProvider(kbs.url, kbs.ca, attester).key_for("mnist") == SECRET
    text = caplog.text + repr(kbs.service) + repr(kbs.store) + repr(kbs.service.config)
    for form in (SECRET.hex(), repr(SECRET), kbs.admin_token):
        assert form not in text
    assert "kbs release sealserve/model-key/mnist allowed" in caplog.text


def test_kbs_imports_neither_serving_nor_tensorflow() -> None:
    code = (
        "import sys, sealserve.kbs.client, sealserve.kbs.http, sealserve.kbs.cli\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'tensorflow', 'grpc', 'tensorflow_serving', 'numpy'} "
        "or m.startswith('sealserve.serving') or m.startswith('sealserve.model_tree'))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_kbs_key_provider_is_a_key_provider(kbs: Kbs, attester: SimAttester) -> None:
    from sealserve.serving.keys import KeyProvider

    provider: KeyProvider = KbsKeyProvider(kbs.url, kbs.ca, attester)
    assert provider.key_for("mnist") == SECRET


def test_a_denied_model_is_reported_once_with_the_kbs_reason(
    kbs: Kbs, sim_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from sealserve.errors import SealserveError
    from sealserve.serving.loader import LoadOptions
    from sealserve.serving.manager import ManagerOptions, ModelManager, State, loader_factory
    from sealserve.serving.model_config import ModelConfig

    other_code = SimAttester(sim_dir, mr_enclave=bytes(32), isv_svn=SVN)
    provider = KbsKeyProvider(kbs.url, kbs.ca, other_code, attempts=1)
    with pytest.raises(SealserveError, match="denied this TEE"):
        provider.key_for("mnist")

    from sealserve.model_tree import encrypt_tree
    from sealserve.tools.models import make_model

    make_model("half_plus_two", tmp_path / "plain")
    encrypt_tree(tmp_path / "plain", str(tmp_path / "mnist" / "1"), SECRET)
    manager = ModelManager(
        [ModelConfig("mnist", str(tmp_path / "mnist"))],
        loader_factory(provider, LoadOptions()),
        ManagerOptions(poll_seconds=-1, max_load_retries=0),
    )
    caplog.clear()
    with caplog.at_level(logging.INFO):
        manager.start()
    manager.stop()
    (status,) = manager.status("mnist")
    assert status.state is State.END and "denied this TEE" in str(status.error)
    assert "mr_enclave" not in str(status.error)  # which pin failed: only in the KBS's audit
    said = [  # by the server: the KBS, in this process here, keeps its own log
        r.getMessage()
        for r in caplog.records
        if "denied this TEE" in r.getMessage() and not r.name.startswith("sealserve.kbs.s")
    ]
    assert len(said) == 1 and said[0].startswith("model mnist version 1 failed to load")
