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
