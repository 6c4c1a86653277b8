"""deploy/tdx/sealserve-td.service: the bare-metal TD path. The server runs as uid 0 only
because configfs-tsm's report files belong to root; the unit gives it no capability, keeps the
file system read-only but for configfs-tsm, and its fixed command line attests with tsm and
gets its keys from the KBS only."""

from __future__ import annotations

import shlex

from sealserve.cli import build_parser
from tests.deploy.common import DEPLOY

UNIT = DEPLOY / "tdx" / "sealserve-td.service"


def _settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    logical = UNIT.read_text().replace("\\\n", " ")
    for line in logical.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_uid_0_without_any_capability() -> None:
    unit = _settings()
    assert unit["User"] == ["root"]
    assert unit["CapabilityBoundingSet"] == [""] and unit["AmbientCapabilities"] == [""]
    assert unit["NoNewPrivileges"] == ["yes"]
    assert unit["ProtectSystem"] == ["strict"]
    assert unit["ReadWritePaths"] == ["/sys/kernel/config/tsm/report"]
    assert unit["LimitCORE"] == ["0"]


def test_the_command_line_attests_with_tsm_and_uses_the_kbs_only() -> None:
    (command,) = _settings()["ExecStart"]
    argv = shlex.split(command)
    assert argv[:2] == ["/opt/sealserve/venv/bin/sealserve", "serve"]
    args = build_parser().parse_args(argv[1:])
    assert args.attestation == "tsm" and args.model_key == []
    assert args.key_broker.startswith("https://") and args.key_broker_ca
    assert args.ssl_config_file and args.ssl_config_key


def test_the_server_serves_a_certificate_the_key_broker_issued_not_ssl_cfg_s() -> None:
    (command,) = _settings()["ExecStart"]
    args = build_parser().parse_args(shlex.split(command)[1:])
    # its TLS key made in the TD, certified by the KBS after attestation: requesters can check it
    assert args.key_broker_tls_name and not args.attested_tls
