"""Verification of real Intel-signed quotes (`tests/vectors/dcap/`, from dcap-qvl's
samples) at the times their README gives, both ways: the expected claims inside the window,
the expected failures outside it and for tampered quotes."""

from __future__ import annotations

import dataclasses
import json

import dcap_qvl
import pytest

from sealserve.attestation import (
    AttestationFailed,
    Collateral,
    collateral_expiry,
    load_collateral,
    verify_quote,
)
from sealserve.attestation.verify import INTEL_ROOT_CA_SHA256, is_intel_root
from sealserve.errors import Code, InvalidArgument
from tests.attestation.common import DCAP

SGX_NOW = 1752919277
TDX_NOW = 1752919234
TD15EX_NOW = 1794008710

# (quote, collateral, valid from, valid until (inclusive), reason one second later)
WINDOWS = [
    ("sgx_quote", "sgx_quote_collateral.json", 1750330571, 1752919278, "QE Identity expired"),
    (
        "tdx_quote",
        "tdx_quote_collateral.json",
        1750329147,
        1752919234,
        "Failed to verify certificate chain; CrlExpired",  # dcap-qvl's cause, kept
    ),
    (
        "tdx_quote_td15ex",
        "tdx_quote_td15ex_collateral.json",
        1791418186,
        1794008711,
        "QE Identity expired",
    ),
    (
        "tdx_quote",
        "tdx_quote_td15ex_collateral_nopckchain.json",
        1791418186,
        1794008711,
        "QE Identity expired",
    ),
]


def quote(name: str) -> bytes:
    return (DCAP / name).read_bytes()


def collateral(name: str) -> Collateral:
    return load_collateral(DCAP / name)


def test_sgx_quote_claims() -> None:
    claims = verify_quote(quote("sgx_quote"), collateral("sgx_quote_collateral.json"), now=SGX_NOW)
    assert claims.tee == "sgx"
    assert claims.quote_version == 3
    assert claims.tcb_status == "ConfigurationAndSWHardeningNeeded"
    assert claims.advisory_ids == ("INTEL-SA-00289", "INTEL-SA-00615")
    assert claims.report_data.startswith(b"Hello, world!")
    assert claims.report_data == b"Hello, world!".ljust(64, b"\0")
    assert claims.mr_enclave is not None and claims.mr_enclave.startswith("33d8736d")
    assert claims.mr_signer is not None and claims.mr_signer.startswith("815f42f1")
    assert (claims.isv_prod_id, claims.isv_svn) == (0, 0)
    assert claims.debug is False
    assert claims.attributes is not None and claims.attributes.startswith("05")
    assert claims.fmspc == "00A067110000"
    assert claims.qe_tcb_status == "UpToDate"
    assert claims.tcb_date == 1710288000  # the matched level's tcbDate, 2024-03-13
    assert claims.mr_td is None and claims.rtmr0 is None


def test_tdx_v4_quote_claims() -> None:
    claims = verify_quote(quote("tdx_quote"), collateral("tdx_quote_collateral.json"), now=TDX_NOW)
    assert (claims.tee, claims.quote_version) == ("tdx", 4)
    assert (claims.tcb_status, claims.advisory_ids) == ("UpToDate", ())
    assert claims.mr_td is not None and claims.mr_td.startswith("91eb2b44")
    assert len(claims.mr_td) == 96
    assert claims.rtmr0 is not None and claims.rtmr0.startswith("44c0197b")
    assert claims.rtmr3 == "00" * 48
    assert claims.td_attributes == "0000001000000000"  # SEPT_VE_DISABLE, not DEBUG
    assert claims.debug is False
    assert claims.fmspc == "B0C06F000000"
    assert claims.mr_enclave is None and claims.isv_prod_id is None
    assert len(claims.report_data) == 64


def test_tdx_v5_td15ex_quote_claims() -> None:
    claims = verify_quote(
        quote("tdx_quote_td15ex"), collateral("tdx_quote_td15ex_collateral.json"), now=TD15EX_NOW
    )
    assert (claims.tee, claims.quote_version, claims.tcb_status) == ("tdx", 5, "UpToDate")
    assert claims.mr_td is not None and claims.mr_td.startswith("2a674327")
    assert claims.mr_config_id is not None and claims.mr_config_id.startswith("0151ed70")


def test_tdx_quote_with_newer_collateral_is_out_of_date() -> None:
    claims = verify_quote(
        quote("tdx_quote"),
        collateral("tdx_quote_td15ex_collateral_nopckchain.json"),
        now=TD15EX_NOW,
    )
    assert claims.tcb_status == "OutOfDate"
    assert claims.advisory_ids == (
        "INTEL-SA-01192",
        "INTEL-SA-01245",
        "INTEL-SA-01312",
        "INTEL-SA-01313",
    )
    assert claims.tcb_date == 1747180800  # 2025-05-14: what a grace period counts from


@pytest.mark.parametrize(("quote_name", "collateral_name", "start", "end", "reason"), WINDOWS)
def test_valid_exactly_inside_the_window(
    quote_name: str, collateral_name: str, start: int, end: int, reason: str
) -> None:
    raw, coll = quote(quote_name), collateral(collateral_name)
    assert (coll.not_before, collateral_expiry(coll)) == (start, end)
    verify_quote(raw, coll, now=start)
    verify_quote(raw, coll, now=end)
    with pytest.raises(AttestationFailed) as after:
        verify_quote(raw, coll, now=end + 1)
    assert str(after.value).startswith(f"quote verification failed: {reason}")
    assert after.value.reason.startswith(reason)
    assert "\n" not in str(after.value)
    assert after.value.code is Code.UNAUTHENTICATED
    with pytest.raises(AttestationFailed, match="issue date is in the future"):
        verify_quote(raw, coll, now=start - 1)


def test_outdated_vector_never_verifies() -> None:
    raw, coll = quote("tdx_quote_outdated"), collateral("tdx_quote_outdated_collateral.json")
    with pytest.raises(AttestationFailed, match="No matching TCB level found"):
        verify_quote(raw, coll, now=coll.expires_at)


@pytest.mark.parametrize(
    ("offset", "what"),
    [
        (436 + 5, "quote signature"),
        (48 + 320, "report_data"),
        (48 + 64, "mr_enclave"),
        (48 + 256, "isv_prod_id"),
    ],
)
def test_tampered_sgx_quote_fails(offset: int, what: str) -> None:
    raw = bytearray(quote("sgx_quote"))
    raw[offset] ^= 0x01
    with pytest.raises(AttestationFailed) as failure:
        verify_quote(bytes(raw), collateral("sgx_quote_collateral.json"), now=SGX_NOW)
    assert str(failure.value) == (
        "quote verification failed: ISV enclave report signature is invalid"
    ), what


def test_tampered_tdx_quote_fails() -> None:
    raw = bytearray(quote("tdx_quote"))
    raw[48 + 520] ^= 0x80  # TD report REPORTDATA
    with pytest.raises(AttestationFailed, match="signature is invalid"):
        verify_quote(bytes(raw), collateral("tdx_quote_collateral.json"), now=TDX_NOW)


def test_tampered_collateral_fails() -> None:
    data = json.loads((DCAP / "sgx_quote_collateral.json").read_text())
    signed = data["tcb_info"]
    data["tcb_info"] = signed.replace(
        '"tcbEvaluationDataNumber":17', '"tcbEvaluationDataNumber":18'
    )
    assert data["tcb_info"] != signed
    coll = Collateral.from_json(json.dumps(data))
    with pytest.raises(AttestationFailed, match="quote verification failed: .*[Ss]ignature"):
        verify_quote(quote("sgx_quote"), coll, now=SGX_NOW)


@pytest.mark.parametrize(
    "raw",
    [b"", b"garbage", quote("sgx_quote")[:1000]],
    ids=["empty", "garbage", "truncated"],
)
def test_malformed_quote_is_one_line_error(raw: bytes) -> None:
    with pytest.raises(AttestationFailed) as failure:
        verify_quote(raw, collateral("sgx_quote_collateral.json"), now=SGX_NOW)
    assert "\n" not in str(failure.value)
    assert str(failure.value).startswith("quote verification failed: ")


def test_collateral_for_another_tee_fails() -> None:
    with pytest.raises(AttestationFailed, match="QE Identity"):
        verify_quote(quote("sgx_quote"), collateral("tdx_quote_collateral.json"), now=TDX_NOW)


def test_explicit_intel_root_is_the_intel_path() -> None:
    root = (DCAP / "Intel_SGX_Provisioning_Certification_RootCA.der").read_bytes()
    assert is_intel_root(root) and is_intel_root(None)
    claims = verify_quote(
        quote("sgx_quote"), collateral("sgx_quote_collateral.json"), now=SGX_NOW, root_ca_der=root
    )
    assert claims.tee == "sgx"  # Intel's root, given explicitly: still real hardware
    assert INTEL_ROOT_CA_SHA256.startswith("44a0196b2b99f889")


def test_tee_hint_must_match() -> None:
    raw, coll = quote("sgx_quote"), collateral("sgx_quote_collateral.json")
    assert verify_quote(raw, coll, now=SGX_NOW, tee_hint="sgx").tee == "sgx"
    with pytest.raises(AttestationFailed, match="evidence says tee tdx"):
        verify_quote(raw, coll, now=SGX_NOW, tee_hint="tdx")
    with pytest.raises(InvalidArgument):
        verify_quote(raw, coll, now=SGX_NOW, tee_hint="sev")


@pytest.mark.parametrize("now", [-1, 1.5, True, "1752919277", 1 << 64])
def test_now_must_be_unix_seconds(now: object) -> None:
    with pytest.raises(InvalidArgument):
        verify_quote(quote("sgx_quote"), collateral("sgx_quote_collateral.json"), now=now)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("quote_name", "collateral_name", "now"),
    [(w[0], w[1], w[3]) for w in WINDOWS],
)
def test_agrees_with_dcap_qvl_verify(quote_name: str, collateral_name: str, now: int) -> None:
    """verify_quote uses dcap-qvl's claims API; it must agree with the one-shot `verify`."""
    raw, coll = quote(quote_name), collateral(collateral_name)
    report = dcap_qvl.verify(raw, coll.dcap, now)
    claims = verify_quote(raw, coll, now=now)
    assert claims.tcb_status == report.status
    assert list(claims.advisory_ids) == report.advisory_ids
    (kind, body), *_ = json.loads(report.to_json())["report"].items()
    while "base" in body:
        body = {**body.pop("base"), **body}
    assert claims.report_data.hex() == body["report_data"]
    if kind == "SgxEnclave":
        assert (claims.mr_enclave, claims.isv_svn) == (body["mr_enclave"], body["isv_svn"])
    else:
        assert (claims.mr_td, claims.rtmr2) == (body["mr_td"], body["rt_mr2"])
    for when in (now + 1, now + 86400):
        with pytest.raises(ValueError) as direct:
            dcap_qvl.verify(raw, coll.dcap, when)
        with pytest.raises(AttestationFailed) as ours:
            verify_quote(raw, coll, now=when)
        lines = [line.strip() for line in str(direct.value).splitlines()]
        expected = "; ".join(line for line in lines if line and line != "Caused by:")
        assert expected == f"Verification failed: {ours.value.reason}"


def test_claims_to_json_is_printable() -> None:
    claims = verify_quote(quote("sgx_quote"), collateral("sgx_quote_collateral.json"), now=SGX_NOW)
    data = claims.to_json()
    assert json.loads(json.dumps(data)) == data
    assert data["report_data"].startswith("48656c6c6f2c20776f726c6421")
    assert data["advisory_ids"] == ["INTEL-SA-00289", "INTEL-SA-00615"]
    assert data["tee"] == "sgx" and data["mr_td"] is None


def test_policy_on_real_sgx_claims() -> None:
    from sealserve.attestation import Policy

    claims = verify_quote(quote("sgx_quote"), collateral("sgx_quote_collateral.json"), now=SGX_NOW)
    ra_config = {
        "verify_mr_enclave": "on",
        "verify_mr_signer": "on",
        "verify_isv_prod_id": "on",
        "verify_isv_svn": "on",
        "mrs": [
            {
                "mr_enclave": claims.mr_enclave,
                "mr_signer": claims.mr_signer,
                "isv_prod_id": "0",
                "isv_svn": "0",
            }
        ],
    }
    strict = Policy.from_ra_config(ra_config)
    decision = strict.decide(claims, SGX_NOW)
    assert decision.reasons == (
        "TCB status ConfigurationAndSWHardeningNeeded is not accepted (accepted: UpToDate)",
        "advisories INTEL-SA-00289, INTEL-SA-00615 are not in the policy's accepted_advisories",
    )
    status_only = dataclasses.replace(
        strict, accepted_tcb_statuses=("UpToDate", "ConfigurationAndSWHardeningNeeded")
    )
    assert not status_only.decide(claims, SGX_NOW).allowed  # advisories: one by one
    one = dataclasses.replace(status_only, accepted_advisories=("INTEL-SA-00289",))
    assert one.decide(claims, SGX_NOW).reasons == (
        "advisories INTEL-SA-00615 are not in the policy's accepted_advisories",
    )
    lenient = dataclasses.replace(one, accepted_advisories=("INTEL-SA-00289", "INTEL-SA-00615"))
    assert lenient.decide(claims, SGX_NOW).allowed
    denying = dataclasses.replace(
        lenient, accepted_advisories=("INTEL-SA-00615",), denied_advisories=("INTEL-SA-00289",)
    )
    assert not denying.decide(claims, SGX_NOW).allowed
    # the vectors are verified on the last second of their collateral's 30 days
    assert SGX_NOW - (claims.collateral_issued_at or 0) == 30 * 86400 - 1
    younger = dataclasses.replace(lenient, max_collateral_age_seconds=29 * 86400)
    assert "max_collateral_age_seconds" in younger.decide(claims, SGX_NOW).reasons[0]


def test_grace_period_on_the_real_out_of_date_tdx_claims() -> None:
    from sealserve.attestation import Policy, TdxIdentity

    claims = verify_quote(
        quote("tdx_quote"),
        collateral("tdx_quote_td15ex_collateral_nopckchain.json"),
        now=TD15EX_NOW,
    )
    assert claims.tcb_date is not None
    assert claims.rtmr0 and claims.rtmr1 and claims.rtmr2
    base = Policy(
        tdx=(
            TdxIdentity(
                mr_td=(claims.mr_td,),
                rtmr0=(claims.rtmr0,),
                rtmr1=(claims.rtmr1,),
                rtmr2=(claims.rtmr2,),
            ),
        ),
        accepted_advisories=tuple(claims.advisory_ids),
    )
    assert not base.decide(claims, TD15EX_NOW).allowed
    age = TD15EX_NOW - claims.tcb_date  # about 18 months
    assert (
        dataclasses.replace(base, tcb_grace_period_seconds=age).decide(claims, TD15EX_NOW).allowed
    )
    short = dataclasses.replace(base, tcb_grace_period_seconds=30 * 86400)
    assert (
        not dataclasses.replace(base, tcb_grace_period_seconds=age, accepted_advisories=())
        .decide(claims, TD15EX_NOW)
        .allowed
    )  # a grace period admits an old TCB level, not its unassessed advisories
    assert "grace period ended 2025-06-13" in short.decide(claims, TD15EX_NOW).reasons[0]


def test_td_policies_that_do_not_identify_a_workload_are_refused() -> None:
    """Issue #13 §3: `mr_td` alone, or `mr_td = "any"` with the all-zero `rtmr3` this very
    quote carries, admitted the real TDX vector; such policies no longer load."""
    from sealserve.attestation import Policy
    from sealserve.errors import InvalidArgument

    claims = verify_quote(
        quote("tdx_quote"),
        collateral("tdx_quote_td15ex_collateral_nopckchain.json"),
        now=TD15EX_NOW,
    )
    assert claims.rtmr3 == "00" * 48
    for text in (
        f'tee = ["tdx"]\n[[tdx]]\nmr_td = ["{claims.mr_td}"]\n',
        f'tee = ["tdx"]\n[[tdx]]\nmr_td = "any"\nrtmr3 = ["{claims.rtmr3}"]\n',
        f'tee = ["tdx"]\n[[tdx]]\nmr_td = ["{claims.mr_td}"]\nrtmr0 = ["{claims.rtmr0}"]\n'
        f'rtmr1 = ["{claims.rtmr1}"]\nrtmr2 = ["{claims.rtmr2}"]\nrtmr3 = ["{claims.rtmr3}"]\n',
    ):
        with pytest.raises(InvalidArgument):
            Policy.from_toml(text, source="p.toml")
