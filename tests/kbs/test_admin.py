"""The admin API and the `sealserve kbs ...` command functions, against a real KBS."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from sealserve.attestation.sim import SimAttester, SimTee
from sealserve.errors import Code, SealserveError
from sealserve.kbs import cli
from sealserve.kbs.client import KbsClient, KbsKeyProvider
from sealserve.kbs.service import Unauthenticated
from tests.kbs.conftest import POLICY, RESOURCE, SIM_NOW, Clock, Kbs, make_service

ADMIN_CALLS = [
    ("PUT", f"/kbs/v0/resource/{RESOURCE}", b"new-secret-value"),
    ("POST", f"/kbs/v0/resource/{RESOURCE}", b"new-secret-value"),
    ("DELETE", f"/kbs/v0/resource/{RESOURCE}", None),
    ("GET", "/kbs/v0/resources", None),
    ("PUT", f"/kbs/v0/resource-policy/{RESOURCE}", b'{"format": "toml", "policy": "x"}'),
    ("GET", f"/kbs/v0/resource-policy/{RESOURCE}", None),
    ("GET", "/kbs/v0/audit", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_CALLS)
@pytest.mark.parametrize("token", [None, "wrong-token-wrong-token", ""])
def test_admin_calls_without_the_token_are_refused(
    kbs: Kbs, method: str, path: str, body: bytes | None, token: str | None
) -> None:
    client = KbsClient(kbs.url, ca_pem=kbs.ca, attempts=1)
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    answer = client.call(method, path, data=body, headers=headers)
    assert answer.status == 401
    assert json.loads(answer.body)["status"] == 401
    assert kbs.store.get_resource(RESOURCE) != b"new-secret-value"
    assert kbs.store.resource_exists(RESOURCE)


def test_admin_token_in_another_scheme_is_refused(kbs: Kbs) -> None:
    client = KbsClient(kbs.url, ca_pem=kbs.ca, attempts=1)
    answer = client.call(
        "GET", "/kbs/v0/resources", headers={"Authorization": f"Basic {kbs.admin_token}"}
    )
    assert answer.status == 401


def test_kbs_without_admin_token_denies_all_admin(tmp_path: Path, sim: SimTee) -> None:
    service = make_service(tmp_path, sim, Clock(SIM_NOW), admin=None)
    for token in (None, "", "anything-anything-anything"):
        with pytest.raises(Unauthenticated, match="deny-all"):
            service.admin_list_resources(token)
    service.store.close()


def _args(kbs: Kbs, token_file: Path, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    extra = ["--url", kbs.url, "--ca", kbs.ca, "--admin-token-file", str(token_file)]
    return parser.parse_args([*argv, *extra])


@pytest.fixture
def token_file(tmp_path: Path, kbs: Kbs) -> Path:
    path = tmp_path / "admin.token"
    path.write_text(kbs.admin_token + "\n")
    path.chmod(0o600)
    return path


def test_cli_secret_policy_audit(
    kbs: Kbs,
    token_file: Path,
    tmp_path: Path,
    attester: SimAttester,
    capsys: pytest.CaptureFixture[str],
) -> None:
    secret = tmp_path / "model.key"
    secret.write_bytes(b"K" * 16)
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    resource = "sealserve/model-key/cli-model"
    assert cli.run(_args(kbs, token_file, "secret", "put", resource, "--file", str(secret))) == 0
    assert cli.run(_args(kbs, token_file, "policy", "set", resource, str(policy))) == 0
    assert cli.run(_args(kbs, token_file, "policy", "show", resource)) == 0
    out = capsys.readouterr().out
    assert "version 1 (16 bytes)" in out and "min_isv_svn = 2" in out
    assert cli.run(_args(kbs, token_file, "secret", "list")) == 0
    listing = capsys.readouterr().out
    assert resource in listing and "KKKK" not in listing

    assert KbsKeyProvider(kbs.url, kbs.ca, attester).key_for("cli-model") == b"K" * 16

    assert cli.run(_args(kbs, token_file, "audit", "--resource", resource)) == 0
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["decision"] for r in lines if r["action"] == "release"] == ["allowed"]
    assert "audit records authenticated by the KBS" in captured.err
    assert "KKKK" not in captured.out

    assert cli.run(_args(kbs, token_file, "secret", "delete", resource)) == 0
    assert not kbs.store.resource_exists(resource)


def test_cli_policy_show_ends_its_output_with_a_newline(
    kbs: Kbs, token_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A JSON policy (as `secret-prov map --ra-config` stores it) has no final newline of its
    own; the shell prompt must not follow it on the same line."""
    from sealserve.attestation import Policy

    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps(Policy.from_toml(POLICY).to_dict()))
    assert cli.run(_args(kbs, token_file, "policy", "set", RESOURCE, str(policy))) == 0
    capsys.readouterr()
    assert cli.run(_args(kbs, token_file, "policy", "show", RESOURCE)) == 0
    out = capsys.readouterr().out
    assert out.endswith("}\n") and json.loads(out)["tee"] == ["sim"]


def test_cli_refuses_a_bad_policy_before_sending(
    kbs: Kbs, token_file: Path, tmp_path: Path
) -> None:
    policy = tmp_path / "bad.toml"
    policy.write_text('tee = ["sim"]\nallow_debug = true\n')
    with pytest.raises(SealserveError, match="unknown setting"):
        cli.run(_args(kbs, token_file, "policy", "set", RESOURCE, str(policy)))


def test_kbs_rejects_a_bad_policy_over_the_api(kbs: Kbs) -> None:
    client = KbsClient(kbs.url, ca_pem=kbs.ca, attempts=1)
    answer = client.call(
        "PUT",
        f"/kbs/v0/resource-policy/{RESOURCE}",
        json_body={"format": "toml", "policy": "tee = ['sim']\n"},
        headers={"Authorization": f"Bearer {kbs.admin_token}"},
    )
    assert answer.status == 400
    assert kbs.store.get_policy(RESOURCE) == (POLICY, "toml")


def test_cli_wrong_token_is_refused(kbs: Kbs, tmp_path: Path) -> None:
    bad = tmp_path / "bad.token"
    bad.write_text("not-the-admin-token-at-all")
    with pytest.raises(SealserveError) as err:
        cli.run(_args(kbs, bad, "secret", "list"))
    assert err.value.code == Code.UNAUTHENTICATED


def test_cli_init_writes_private_keys(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    directory = tmp_path / "kbs-keys"
    assert cli.run(parser.parse_args(["init", str(directory)])) == 0
    for name in ("master.key", "signing-key.pem", "admin.token"):
        assert (directory / name).stat().st_mode & 0o777 == 0o600
    assert directory.stat().st_mode & 0o777 == 0o700
    with pytest.raises(SealserveError, match="not empty"):
        cli.run(parser.parse_args(["init", str(directory)]))
    # the serve command builds a service from these files
    args = parser.parse_args(
        [
            "serve",
            "--db",
            str(tmp_path / "kbs.db"),
            "--master-key",
            str(directory / "master.key"),
            "--signing-key",
            str(directory / "signing-key.pem"),
            "--admin-token-file",
            str(directory / "admin.token"),
            "--insecure-http",
        ]
    )
    with pytest.raises(SealserveError, match="--collateral"):
        cli.build_service(args)


def test_serve_requires_tls_unless_insecure(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["serve", "--db", "x", "--master-key", "k", "--signing-key", "s"])
    with pytest.raises(SealserveError, match="HTTPS"):
        cli.run(args)


def _health(kbs: Kbs) -> tuple[int, dict[str, str]]:
    import ssl
    import urllib.error
    import urllib.request

    context = ssl.create_default_context(cafile=kbs.ca)
    try:
        with urllib.request.urlopen(f"{kbs.url}/healthz", context=context, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_health_answers_without_a_token_and_follows_the_store(
    kbs: Kbs, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _health(kbs) == (200, {"status": "ok"})

    def unreachable(path: str) -> bool:
        raise OSError("connection refused")

    monkeypatch.setattr(kbs.service.store, "resource_exists", unreachable)
    assert _health(kbs) == (503, {"status": "unavailable"})
