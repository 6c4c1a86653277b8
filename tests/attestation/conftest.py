"""Fixtures of the attestation tests: one simulated TEE per test module (its directory, its
public side, and an attester), created once at `SIM_NOW` and only read afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sealserve.attestation.sim import SimAttester, SimTee, init_sim, load_sim
from tests.attestation.common import SIM_NOW


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("sim") / "tee"
    init_sim(directory, now=SIM_NOW)
    yield directory


@pytest.fixture(scope="module")
def sim(sim_dir: Path) -> SimTee:
    return load_sim(sim_dir)


@pytest.fixture(scope="module")
def sim_attester(sim_dir: Path) -> SimAttester:
    return SimAttester(sim_dir, mr_enclave=bytes(range(32)))
