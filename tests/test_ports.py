"""Ports of `sealserve serve`: 0 binds a free port (REST as gRPC; the start-up line and the
harness read which), `off` is the explicit "no listener", anything else is refused."""

from __future__ import annotations

import pytest

from sealserve.cli import build_parser


def rest_port(*flags: str) -> int | None:
    return build_parser().parse_args(["serve", "--model_base_path=/m", *flags]).rest_api_port


def test_rest_is_off_unless_asked_for():
    assert rest_port() is None
    assert rest_port("--rest_api_port=off") is None
    assert rest_port("--rest_api_port=OFF") is None


def test_rest_port_zero_means_any_free_port_not_off():
    assert rest_port("--rest_api_port=0") == 0
    assert rest_port("--rest_api_port=8501") == 8501


@pytest.mark.parametrize("bad", ["-1", "65536", "http", ""])
def test_a_bad_port_is_one_clear_line(bad, capsys):
    with pytest.raises(SystemExit) as raised:
        rest_port(f"--rest_api_port={bad}")
    assert raised.value.code == 2
    assert "is not a port: give 1-65535, 0 for any free port, or off" in capsys.readouterr().err


@pytest.mark.integration
def test_a_grpc_port_in_use_is_one_clear_line(half_plus_two, tmp_path):
    import socket
    import subprocess
    import sys
    from pathlib import Path

    base = tmp_path / "models" / "hpt"
    base.mkdir(parents=True)
    (base / "1").symlink_to(half_plus_two)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                str(Path(sys.executable).parent / "sealserve"),
                "serve",
                "--model_name=hpt",
                f"--model_base_path={base}",
                f"--port={port}",
                "--bind_address=127.0.0.1",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert result.returncode != 0
    assert f"cannot serve gRPC on 127.0.0.1:{port}: the address is in use" in result.stderr
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr
