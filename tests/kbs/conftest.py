"""Fixtures of the KBS tests: one simulated TEE and one real KBS (HTTPS on loopback, in a
background thread) per module, with an injectable clock reset before every test."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from joserfc.jwk import ECKey

from sealserve.attestation.sim import SIM_MR_SIGNER, SimAttester, SimTee, init_sim, load_sim
from sealserve.kbs.service import KbsConfig, KbsService
from sealserve.kbs.store import MasterKey, SqliteStore
from sealserve.tools.certs import make_oneway
from tests.harness import RunningKbs, free_port

SIM_NOW = 1_800_000_000
MR_ENCLAVE = bytes(range(32))
SVN = 3
RESOURCE = "sealserve/model-key/mnist"
SECRET = b"\x13\x37" * 8  # a 16-byte wrap key

POLICY = f"""
tee = ["sim"]
[[sim]]
mr_enclave = ["{MR_ENCLAVE.hex()}"]
mr_signer = ["{SIM_MR_SIGNER.hex()}"]
isv_prod_id = [0]
min_isv_svn = 2
"""


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("sim") / "tee"
    init_sim(directory, now=SIM_NOW)
    return directory


@pytest.fixture(scope="module")
def sim(sim_dir: Path) -> SimTee:
    return load_sim(sim_dir)


@pytest.fixture(scope="module")
def attester(sim_dir: Path) -> SimAttester:
    return SimAttester(sim_dir, mr_enclave=MR_ENCLAVE, isv_svn=SVN)


@dataclass
class Kbs:
    url: str
    ca: str
    service: KbsService
    store: SqliteStore
    clock: Clock
    admin_token: str
    directory: Path


def make_service(
    directory: Path, sim: SimTee, clock: Clock, *, trust_sim: bool = True, admin: str | None
) -> KbsService:
    key_file = directory / "master.key"
    if not key_file.exists():
        key_file.write_bytes(secrets.token_bytes(32))
        key_file.chmod(0o600)
    store = SqliteStore(directory / "kbs.db", MasterKey.load(key_file))
    config = KbsConfig(
        signing_key=ECKey.generate_key("P-256"),
        collateral=sim.collateral,
        admin_token=admin,
        insecure_trust_sim_root=sim.root_ca_der if trust_sim else None,
        clock=clock,
    )
    return KbsService(store, config)


def make_ca_service(directory: Path, sim: SimTee) -> KbsService:
    """A KBS service (no admin token) that issues attested servers' TLS certificates from a
    server CA made in `directory` (one-hour certificates)."""
    from sealserve.kbs.server_ca import ServerCA, make_server_ca

    make_server_ca(directory)
    service = make_service(directory, sim, Clock(SIM_NOW + 60), admin=None)
    service.config.server_ca = ServerCA.load(
        str(directory / "server-ca-key.pem"),
        str(directory / "server-ca.pem"),
        lifetime_seconds=3600,
    )
    return service


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return make_oneway("localhost", tmp_path_factory.mktemp("tls") / "certs", sans=["127.0.0.1"])


@pytest.fixture(scope="module")
def kbs_module(tmp_path_factory: pytest.TempPathFactory, sim: SimTee, certs) -> Iterator[Kbs]:  # type: ignore[no-untyped-def]
    directory = tmp_path_factory.mktemp("kbs")
    clock = Clock(SIM_NOW + 60)
    admin = secrets.token_urlsafe(24)
    service = make_service(directory, sim, clock, admin=admin)
    server = RunningKbs(service, certs.server_cert, certs.server_key)
    try:
        yield Kbs(
            url=server.url,
            ca=str(certs.trust_anchor),
            service=service,
            store=service.store,  # type: ignore[arg-type]
            clock=clock,
            admin_token=admin,
            directory=directory,
        )
    finally:
        server.stop()
        service.store.close()


@pytest.fixture
def kbs(kbs_module: Kbs) -> Kbs:
    """The module's KBS with the clock reset, the test resource and its policy in place."""
    kbs_module.clock.now = SIM_NOW + 60
    kbs_module.store.put_resource(RESOURCE, SECRET)
    kbs_module.store.set_policy(RESOURCE, POLICY, "toml")
    return kbs_module


# --- a throwaway PostgreSQL server (module scope; skipped without its binaries) ---------------

KBS_TABLES = ("kbs_resources", "kbs_policies", "kbs_audit", "kbs_checkpoints", "kbs_meta")
PG_BIN = Path("/usr/lib/postgresql/15/bin")
INITDB = shutil.which("initdb") or str(PG_BIN / "initdb")
PG_CTL = shutil.which("pg_ctl") or str(PG_BIN / "pg_ctl")


def _as_postgres(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def _run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    if not (os.path.exists(INITDB) and os.path.exists(PG_CTL)):
        pytest.skip("PostgreSQL server binaries not installed")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("running as root without runuser: initdb refuses root")
    port = free_port()  # PostgreSQL cannot bind port 0 and report it
    base = Path(tempfile.mkdtemp(prefix="kbs-pg-"))
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        shutil.chown(sock, "postgres")
    _run(_as_postgres([INITDB, "-D", str(data), "-A", "trust", "-U", "postgres"]))
    _run(
        _as_postgres(
            [
                PG_CTL,
                "-D",
                str(data),
                "-w",
                "-l",
                str(base / "log"),
                "-o",
                f"-k {sock} -h '' -p {port}",
                "start",
            ]
        )
    )
    try:
        yield f"postgresql://postgres@/postgres?host={sock}&port={port}"
    finally:
        _run(_as_postgres([PG_CTL, "-D", str(data), "-m", "fast", "stop"]))
        shutil.rmtree(base, ignore_errors=True)
