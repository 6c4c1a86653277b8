"""`sealserve kbs get-resource` (issue #13 §4): the TEE-side fetch on its own, as Trustee's
`kbs-client get-resource`; the secret goes only to the file asked for, mode 0600."""

from __future__ import annotations

import argparse
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from sealserve.errors import PermissionDenied, SealserveError
from sealserve.kbs import cli
from tests.kbs.conftest import MR_ENCLAVE, RESOURCE, SECRET, Kbs


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.run(parser.parse_args(list(argv)))


def fetch(kbs: Kbs, sim_dir: Path, *extra: str, mr_enclave: bytes = MR_ENCLAVE) -> list[str]:
    return [
        "get-resource",
        RESOURCE,
        "--url",
        kbs.url,
        "--ca",
        kbs.ca,
        "--attester",
        "sim",
        "--sim-dir",
        str(sim_dir),
        "--sim-mr-enclave",
        mr_enclave.hex(),
        *extra,
    ]


def test_get_resource_writes_the_secret_with_mode_0600(
    kbs: Kbs, sim_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the conftest policy wants isv_svn >= 2; the CLI's sim attester quotes svn 0
    kbs.store.set_policy(RESOURCE, POLICY_ANY_SVN, "toml")
    out = tmp_path / "key.bin"
    assert run(*fetch(kbs, sim_dir, "-o", str(out))) == 0
    assert out.read_bytes() == SECRET
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    captured = capsys.readouterr()
    assert SECRET.hex() not in captured.out + captured.err
    assert "wrote" in captured.err
    with pytest.raises(SealserveError, match="exists"):  # never over a file unasked
        run(*fetch(kbs, sim_dir, "-o", str(out)))
    assert run(*fetch(kbs, sim_dir, "-o", str(out), "--force")) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["key.bin"]  # no temporary left


def test_get_resource_denied_writes_nothing(kbs: Kbs, sim_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "key.bin"
    with pytest.raises(PermissionDenied, match="denied this TEE"):
        run(*fetch(kbs, sim_dir, "-o", str(out), mr_enclave=bytes(range(1, 33))))
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_get_resource_from_the_shell(kbs: Kbs, sim_dir: Path, tmp_path: Path) -> None:
    kbs.store.set_policy(RESOURCE, POLICY_ANY_SVN, "toml")
    sealserve = str(Path(sys.executable).with_name("sealserve"))
    result = subprocess.run(
        [sealserve, "kbs", *fetch(kbs, sim_dir, "-o", "-")], capture_output=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == SECRET
    bad = subprocess.run(
        [sealserve, "kbs", *fetch(kbs, sim_dir, "-o", str(tmp_path / "k"))[:-2]],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    denied = subprocess.run(
        [
            sealserve,
            "kbs",
            *fetch(kbs, sim_dir, "-o", str(tmp_path / "k"), mr_enclave=bytes(range(1, 33))),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ},
    )
    assert denied.returncode != 0 and "denied this TEE" in denied.stderr
    assert "Traceback" not in denied.stderr and not (tmp_path / "k").exists()


POLICY_ANY_SVN = f"""
tee = ["sim"]
[[sim]]
mr_enclave = ["{MR_ENCLAVE.hex()}"]
mr_signer = "any"
isv_prod_id = [0]
"""


def test_from_ra_config_accepts_advisories_one_by_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A status other than UpToDate names advisories; each must be accepted by name."""
    import json

    ra_config = tmp_path / "ra_config.json"
    ra_config.write_text(
        json.dumps(
            {
                "verify_mr_enclave": "on",
                "verify_mr_signer": "off",
                "verify_isv_prod_id": "off",
                "verify_isv_svn": "off",
                "mrs": [{"mr_enclave": MR_ENCLAVE.hex()}],
            }
        )
    )
    convert = ["policy", "from-ra-config", str(ra_config)]
    assert run(*convert, "--accept-tcb-status", "SWHardeningNeeded") == 0
    assert json.loads(capsys.readouterr().out)["accepted_advisories"] == []
    relaxed = ["--accept-tcb-status", "SWHardeningNeeded", "--accept-advisory", "intel-sa-00615"]
    assert run(*convert, *relaxed) == 0
    policy = json.loads(capsys.readouterr().out)
    assert policy["accepted_advisories"] == ["INTEL-SA-00615"]
    assert policy["accepted_tcb_statuses"] == ["UpToDate", "SWHardeningNeeded"]
    with pytest.raises(SealserveError, match="advisory id"):
        run(*convert, "--accept-advisory", "any")
