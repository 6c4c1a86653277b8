"""Keys can be revoked (issue #16): a key released on a lease (the policy's key_lease_seconds)
is renewed by the server over its attested session; `sealserve kbs secret revoke` makes the
server unload what the key protects within one lease, END with the reason; a KBS that cannot
be reached does not unload anything before the lease ends, but does once it has ended,
unless the policy keeps keys while the KBS is unreachable. One KBS, one server, three models:

- `revoked`: lease 4 s, revoked by the owner while the KBS runs;
- `strict`: lease 6 s, unloaded once the KBS is gone and the lease has run out;
- `kept`: lease 6 s with keep_key_when_kbs_unreachable, still served after that.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

import pytest

from sealserve.model_tree import encrypt_tree
from sealserve.tools.certs import make_oneway
from tests.harness import KbsProcess, ServeProcess, sim_kbs_argv
from tests.test_attested_tls import run

LEASES = {"revoked": (4, False), "strict": (6, False), "kept": (6, True)}


def status(port: int, model: str) -> dict:  # type: ignore[type-arg]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models/{model}", timeout=5) as r:
            return json.loads(r.read())["model_version_status"][0]
    except (OSError, ValueError, KeyError, IndexError):
        return {}


def wait_until(condition: Callable[[], bool], seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.5)


def predict(port: int, model: str) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/models/{model}:predict",
        data=b'{"instances": [1.0]}',
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as err:
        return err.code


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, half_plus_two) -> Iterator[dict]:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("revocation")
    run("sim", "init", root / "sim")
    run("kbs", "init", root / "kbs")
    tls = make_oneway("localhost", root / "kbs-tls", sans=["127.0.0.1"])
    kbs = KbsProcess(sim_kbs_argv(root, tls))
    admin = ["--url", kbs.url, "--ca", tls.server_cert]
    admin += ["--admin-token-file", root / "kbs" / "admin.token"]
    config = root / "models.config"
    entries = []
    for name in LEASES:
        key = root / f"{name}.key"
        run("keygen", "-w", key)
        encrypt_tree(half_plus_two, str(root / "models" / name / "1"), key.read_bytes())
        run("kbs", "secret", "put", f"sealserve/model-key/{name}", "--file", key, *admin)
        entries.append(
            f'config {{ name: "{name}" base_path: "{root / "models" / name}" '
            'model_platform: "tensorflow" }'
        )
    config.write_text("model_config_list {\n" + "\n".join(entries) + "\n}\n")
    flags = [
        f"--model_config_file={config}",
        "--port=0",  # the harness reads the ports the server bound from its start-up line
        "--rest_api_port=0",
        "--bind_address=127.0.0.1",
        f"--key_broker={kbs.url}",
        f"--key_broker_ca={tls.server_cert}",
        "--attestation=sim",
        f"--sim_dir={root / 'sim'}",
    ]
    measured = run("measure", *flags).stdout.strip()
    for name, (lease, keep) in LEASES.items():
        policy = root / f"{name}.toml"
        policy.write_text(
            f"key_lease_seconds = {lease}\n"
            f"keep_key_when_kbs_unreachable = {'true' if keep else 'false'}\n"
            f'tee = ["sim"]\n[[sim]]\nmr_enclave = ["{measured}"]\nmr_signer = "any"\n'
            'isv_prod_id = "any"\n'
        )
        run("kbs", "policy", "set", f"sealserve/model-key/{name}", policy, *admin)
    server = ServeProcess(*flags)
    rest_port = server.rest_port
    try:
        wait_until(lambda: all(status(rest_port, m).get("state") == "AVAILABLE" for m in LEASES))
        yield {"kbs": kbs, "server": server, "port": rest_port, "admin": admin}
    finally:
        server.stop()
        kbs.stop()


def test_revoking_a_key_unloads_its_model_within_one_lease(cluster) -> None:  # type: ignore[no-untyped-def]
    port = cluster["port"]
    assert predict(port, "revoked") == 200
    run("kbs", "secret", "revoke", "sealserve/model-key/revoked", *cluster["admin"])

    wait_until(lambda: status(port, "revoked").get("state") == "END")
    assert status(port, "revoked")["status"]["error_message"] == (
        "key revoked: the key broker no longer releases sealserve/model-key/revoked"
        " (resource not found)"
    )
    assert predict(port, "revoked") == 404
    assert status(port, "strict")["state"] == status(port, "kept")["state"] == "AVAILABLE"
    audit = run("kbs", "audit", "--resource", "sealserve/model-key/revoked", *cluster["admin"])
    records = [json.loads(line) for line in audit.stdout.splitlines()]
    assert any(r["action"] == "admin" and r["reason"] == "revoke" for r in records)
    assert records[-1]["action"] == "release" and records[-1]["decision"] == "denied"


def test_an_unreachable_kbs_ends_leases_only_when_they_run_out(cluster) -> None:  # type: ignore[no-untyped-def]
    port = cluster["port"]
    cluster["kbs"].stop()
    # no outage from a KBS restart: the model serves on while its lease lasts
    assert status(port, "strict")["state"] == "AVAILABLE"
    assert predict(port, "strict") == 200

    wait_until(lambda: status(port, "strict").get("state") == "END")
    assert "key lease expired" in status(port, "strict")["status"]["error_message"]
    # the policy of `kept` keeps its key while the KBS cannot be reached
    assert status(port, "kept")["state"] == "AVAILABLE"
    assert predict(port, "kept") == 200
    assert cluster["server"].process.poll() is None
