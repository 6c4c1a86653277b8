"""The simulated TEE: real DCAP verification under its own root, nothing less."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import dcap_qvl
import pytest

from sealserve.attestation import (
    AttestationFailed,
    SimAttester,
    init_sim,
    load_sim,
    measurement,
    verify_quote,
)
from sealserve.attestation.sim import CLOCK_SKEW_SECONDS, DEFAULT_VALIDITY_SECONDS, FILES, SimTee
from sealserve.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from tests.attestation.common import SIM_NOW

REPORT_DATA = bytes(range(64))
MR_ENCLAVE = bytes(range(32))


def test_init_writes_the_files_with_private_keys_0600(sim_dir: Path) -> None:
    assert sorted(p.name for p in sim_dir.iterdir()) == sorted(FILES)
    for name in ("attestation_key.pem", "pck_key.pem"):
        assert stat.S_IMODE((sim_dir / name).stat().st_mode) == 0o600
    assert stat.S_IMODE((sim_dir / "root_ca.der").stat().st_mode) == 0o644
    assert stat.S_IMODE(sim_dir.stat().st_mode) == 0o700
    parameters = json.loads((sim_dir / "sim.json").read_text())
    assert parameters["fmspc"] == "5EA15E000000"


def test_collateral_window_follows_now(sim: SimTee) -> None:
    assert sim.collateral.not_before == SIM_NOW - CLOCK_SKEW_SECONDS
    assert sim.expires_at == SIM_NOW + DEFAULT_VALIDITY_SECONDS
    assert (sim.collateral.key.tee, sim.collateral.key.ca) == ("sgx", "processor")
    # the exact DCAP formats: dcap-qvl parses them, and the JSON is Intel's shape
    tcb_info = json.loads(sim.collateral.dcap.tcb_info)
    assert (tcb_info["id"], tcb_info["version"]) == ("SGX", 3)
    qe_identity = json.loads(sim.collateral.dcap.qe_identity)
    assert (qe_identity["id"], qe_identity["version"]) == ("QE", 2)


def test_quote_verifies_under_the_sim_root_as_up_to_date(
    sim: SimTee, sim_attester: SimAttester
) -> None:
    raw = sim_attester.quote(REPORT_DATA, MR_ENCLAVE, isv_prod_id=7, isv_svn=3)
    report = dcap_qvl.verify_with_root_ca(raw, sim.collateral.dcap, sim.root_ca_der, SIM_NOW)
    assert (report.status, report.advisory_ids) == ("UpToDate", [])
    # and strict dcap-qvl policy (UpToDate only) accepts it as well
    dcap_qvl.QuoteVerifier(sim.root_ca_der).verify_with_policy(
        raw, sim.collateral.dcap, SIM_NOW, dcap_qvl.QuotePolicy.strict(SIM_NOW)
    )
    claims = verify_quote(raw, sim.collateral, now=SIM_NOW, root_ca_der=sim.root_ca_der)
    assert claims.tee == "sim"
    assert claims.quote_version == 3
    assert claims.tcb_status == "UpToDate"
    assert claims.mr_enclave == MR_ENCLAVE.hex()
    assert claims.report_data == REPORT_DATA
    assert (claims.isv_prod_id, claims.isv_svn, claims.debug) == (7, 3, False)
    assert claims.fmspc == "5EA15E000000"


def test_sim_quote_fails_under_intel_root(sim: SimTee, sim_attester: SimAttester) -> None:
    raw = sim_attester.quote(REPORT_DATA, MR_ENCLAVE)
    with pytest.raises(ValueError):
        dcap_qvl.verify(raw, sim.collateral.dcap, SIM_NOW)
    with pytest.raises(AttestationFailed) as failure:
        verify_quote(raw, sim.collateral, now=SIM_NOW)  # root_ca_der=None: Intel's
    # said in our words, not dcap-qvl's "Failed to parse root CA CRL; InvalidCrlSignature..."
    sim_root = hashlib.sha256(sim.root_ca_der).hexdigest()[:16]
    assert str(failure.value) == (
        f"quote verification failed: the quote's certificate chain leads to root CA sha256 "
        f"{sim_root}, not to the trust anchor, Intel's SGX root CA"
    )


def test_sim_quote_with_a_different_sim_root_fails(
    tmp_path: Path, sim: SimTee, sim_attester: SimAttester
) -> None:
    other = init_sim(tmp_path / "other", now=SIM_NOW)
    raw = sim_attester.quote(REPORT_DATA, MR_ENCLAVE)
    other_root = hashlib.sha256(other.root_ca_der).hexdigest()[:16]
    for collateral in (sim.collateral, other.collateral):
        with pytest.raises(AttestationFailed) as failure:
            verify_quote(raw, collateral, now=SIM_NOW, root_ca_der=other.root_ca_der)
        assert f"not to the trust anchor, the root CA given (sha256 {other_root})" in str(
            failure.value
        )


def test_debug_enclave_is_rejected(sim: SimTee, sim_attester: SimAttester) -> None:
    raw = sim_attester.quote(REPORT_DATA, MR_ENCLAVE, debug=True)
    with pytest.raises(AttestationFailed) as failure:
        verify_quote(raw, sim.collateral, now=SIM_NOW, root_ca_der=sim.root_ca_der)
    assert str(failure.value) == "quote verification failed: Debug mode is enabled"


@pytest.mark.parametrize(
    "offset",
    [48 + 64, 48 + 320, 436 + 3, 436 + 64 + 5, 436 + 128 + 320, 436 + 128 + 384 + 9],
    ids=["mr_enclave", "report_data", "signature", "attestation_key", "qe_report", "qe_sig"],
)
def test_tampered_sim_quote_is_rejected(
    sim: SimTee, sim_attester: SimAttester, offset: int
) -> None:
    raw = bytearray(sim_attester.quote(REPORT_DATA, MR_ENCLAVE))
    raw[offset] ^= 0x04
    with pytest.raises(AttestationFailed):
        verify_quote(bytes(raw), sim.collateral, now=SIM_NOW, root_ca_der=sim.root_ca_der)


def test_expired_sim_collateral_is_rejected(sim: SimTee, sim_attester: SimAttester) -> None:
    raw = sim_attester.quote(REPORT_DATA, MR_ENCLAVE)
    verify_quote(raw, sim.collateral, now=sim.expires_at, root_ca_der=sim.root_ca_der)
    with pytest.raises(AttestationFailed) as failure:
        verify_quote(raw, sim.collateral, now=sim.expires_at + 1, root_ca_der=sim.root_ca_der)
    assert str(failure.value) in (
        "quote verification failed: TCBInfo expired",
        "quote verification failed: QE Identity expired",
    )
    with pytest.raises(AttestationFailed, match="issue date is in the future"):
        verify_quote(
            raw, sim.collateral, now=sim.collateral.not_before - 1, root_ca_der=sim.root_ca_der
        )


def test_tee_hint_sim(sim: SimTee, sim_attester: SimAttester) -> None:
    raw = sim_attester.quote(REPORT_DATA, MR_ENCLAVE)
    root = sim.root_ca_der
    assert verify_quote(raw, sim.collateral, now=SIM_NOW, root_ca_der=root, tee_hint="sim").tee
    with pytest.raises(AttestationFailed, match="evidence says tee sgx"):
        verify_quote(raw, sim.collateral, now=SIM_NOW, root_ca_der=root, tee_hint="sgx")


def test_evidence_quotes_for_the_measurement(sim: SimTee, sim_dir: Path, tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "server.py").write_text("print('serving')\n")
    launch = {"model_base_path": "/models/resnet", "port": 8500}
    attester = SimAttester(sim_dir, launch_config=launch, code_root=code)
    evidence = attester.evidence(REPORT_DATA)
    assert evidence.tee == "sim"
    claims = verify_quote(evidence.quote, sim.collateral, now=SIM_NOW, root_ca_der=sim.root_ca_der)
    assert claims.mr_enclave == measurement(launch, code_root=code).hex()
    assert claims.report_data == REPORT_DATA


@pytest.mark.parametrize("size", [0, 32, 63, 65])
def test_report_data_must_be_64_bytes(sim_attester: SimAttester, size: int) -> None:
    with pytest.raises(InvalidArgument, match="64 bytes"):
        sim_attester.quote(bytes(size), MR_ENCLAVE)
    with pytest.raises(InvalidArgument):
        sim_attester.evidence(bytes(size))


def test_bad_identity_is_refused(sim_attester: SimAttester) -> None:
    with pytest.raises(InvalidArgument):
        sim_attester.quote(REPORT_DATA, bytes(31))
    with pytest.raises(InvalidArgument):
        sim_attester.quote(REPORT_DATA, MR_ENCLAVE, isv_svn=1 << 16)


def test_init_refuses_an_existing_directory(sim_dir: Path) -> None:
    with pytest.raises(AlreadyExists):
        init_sim(sim_dir, now=SIM_NOW)


def test_init_is_all_or_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sealserve.attestation import sim as sim_module

    def broken(*args: object, **kwargs: object) -> bytes:
        raise OSError("disk full")

    monkeypatch.setattr(sim_module, "_key_pem", broken)
    with pytest.raises(OSError):
        init_sim(tmp_path / "tee", now=SIM_NOW)
    assert list(tmp_path.iterdir()) == []


def test_init_validates_its_arguments(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        init_sim(tmp_path / "a", now=SIM_NOW, validity_seconds=CLOCK_SKEW_SECONDS)
    with pytest.raises(InvalidArgument):
        init_sim(tmp_path / "b", now=0)


def test_attester_needs_a_sim_directory(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match="init_sim"):
        SimAttester(tmp_path)


def test_load_sim_round_trips(sim: SimTee, sim_dir: Path) -> None:
    again = load_sim(sim_dir)
    assert again.root_ca_der == sim.root_ca_der
    assert again.collateral.json_text == sim.collateral.json_text


def test_end_to_end_sim_release_decision(sim: SimTee, sim_dir: Path, tmp_path: Path) -> None:
    from sealserve.attestation import Policy

    code = tmp_path / "code"
    code.mkdir()
    (code / "app.py").write_text("x = 1\n")
    launch = {"port": 8500}
    evidence = SimAttester(sim_dir, launch_config=launch, code_root=code).evidence(REPORT_DATA)
    claims = verify_quote(
        evidence.quote, sim.collateral, now=SIM_NOW, root_ca_der=sim.root_ca_der, tee_hint="sim"
    )
    production = Policy.from_toml(
        f'[[sgx]]\nmr_enclave = ["{claims.mr_enclave}"]\nmr_signer = "any"\nisv_prod_id = "any"\n'
    )
    assert production.decide(claims, SIM_NOW).reasons == (
        "tee sim is not accepted by the policy (accepted: sgx, tdx)",
    )
    demo = Policy.from_toml(
        f'tee = ["sim"]\n[[sim]]\nmr_enclave = ["{measurement(launch, code_root=code).hex()}"]\n'
        'mr_signer = "any"\nisv_prod_id = "any"\n'
    )
    assert demo.decide(claims, SIM_NOW).allowed
    (code / "app.py").write_text("x = 2\n")  # changed code: a different measurement
    changed = SimAttester(sim_dir, launch_config=launch, code_root=code).evidence(REPORT_DATA)
    changed_claims = verify_quote(
        changed.quote, sim.collateral, now=SIM_NOW, root_ca_der=sim.root_ca_der
    )
    assert not demo.decide(changed_claims, SIM_NOW).allowed
