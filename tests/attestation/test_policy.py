"""The attestation policy: a pure function, tested with tables of cases (each rule both
allows and denies), plus the file format and the ra_config.json conversion."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from sealserve.attestation import AttestationDenied, Claims, Policy, SgxIdentity, TdxIdentity
from sealserve.errors import Code, InvalidArgument

NOW = 1_800_000_000
DAY = 86400
MRE = "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"
MRS = "815f42f11cf64430c30bab7816ba596a1da0130c3b028b673133a66cf9a3e0e6"
OTHER = "ab" * 32
MRTD = (
    "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407"
    "de03ae6dc5f87f27428b2538873118b7"
)
RTMR = "44" * 48
RTMR1 = "55" * 48
RTMR2 = "66" * 48
CONFIG_ID = "77" * 48

SGX = Claims(
    tee="sgx",
    quote_version=3,
    tcb_status="UpToDate",
    advisory_ids=(),
    report_data=bytes(64),
    debug=False,
    fmspc="00A067110000",
    tcb_date=NOW - 100 * DAY,
    collateral_issued_at=NOW - DAY,
    mr_enclave=MRE,
    mr_signer=MRS,
    isv_prod_id=0,
    isv_svn=2,
)
TDX = Claims(
    tee="tdx",
    quote_version=4,
    tcb_status="UpToDate",
    advisory_ids=(),
    report_data=bytes(64),
    debug=False,
    fmspc="B0C06F000000",
    tcb_date=NOW - 100 * DAY,
    collateral_issued_at=NOW - DAY,
    mr_td=MRTD,
    mr_config_id=CONFIG_ID,
    rtmr0=RTMR,
    rtmr1=RTMR1,
    rtmr2=RTMR2,
    rtmr3="00" * 48,
    td_attributes="0000001000000000",
)
SIM = dataclasses.replace(SGX, tee="sim")

PIN_SGX = SgxIdentity(mr_enclave=(MRE,), mr_signer=None, isv_prod_id=None)
PIN_TDX = TdxIdentity(mr_td=(MRTD,), rtmr0=(RTMR,), rtmr1=(RTMR1,), rtmr2=(RTMR2,))
BASE = Policy(sgx=(PIN_SGX,), tdx=(PIN_TDX,))


def pin_sgx(**changes: Any) -> SgxIdentity:
    return dataclasses.replace(PIN_SGX, **changes)


def policy(**changes: Any) -> Policy:
    return dataclasses.replace(BASE, **changes)


def claims(base: Claims = SGX, **changes: Any) -> Claims:
    return dataclasses.replace(base, **changes)


# (name, policy, claims, now, allowed, a fragment of the (first) reason or note)
CASES: list[tuple[str, Policy, Claims, int, bool, str]] = [
    # tee types
    ("sgx accepted by default", BASE, SGX, NOW, True, ""),
    ("tdx accepted by default", BASE, TDX, NOW, True, ""),
    ("sim never by default", BASE, SIM, NOW, False, "tee sim is not accepted"),
    (
        "sim when listed",
        policy(tee=("sim",), sim=(PIN_SGX,)),
        SIM,
        NOW,
        True,
        "",
    ),
    (
        "sim claims are not matched against [[sgx]]",
        policy(tee=("sgx", "sim")),
        SIM,
        NOW,
        False,
        "no [[sim]] entry",
    ),
    ("tdx not listed", policy(tee=("sgx",)), TDX, NOW, False, "tee tdx is not accepted"),
    # debug
    ("debug denied", BASE, claims(debug=True), NOW, False, "debug mode"),
    ("debug TD denied", BASE, claims(TDX, debug=True), NOW, False, "debug mode"),
    (
        "debug allowed insecurely",
        policy(allow_debug_insecure=True),
        claims(debug=True),
        NOW,
        True,
        "",
    ),
    # TCB status
    (
        "SWHardeningNeeded denied by default",
        BASE,
        claims(tcb_status="SWHardeningNeeded"),
        NOW,
        False,
        "TCB status SWHardeningNeeded is not accepted",
    ),
    (
        "SWHardeningNeeded when accepted",
        policy(accepted_tcb_statuses=("UpToDate", "SWHardeningNeeded")),
        claims(tcb_status="SWHardeningNeeded"),
        NOW,
        True,
        "",
    ),
    (
        "OutOfDate without grace",
        BASE,
        claims(tcb_status="OutOfDate"),
        NOW,
        False,
        "OutOfDate is not accepted",
    ),
    (
        "OutOfDate inside the grace period",
        policy(tcb_grace_period_seconds=101 * DAY),
        claims(tcb_status="OutOfDate"),
        NOW,
        True,
        "accepted in its grace period until",
    ),
    (
        "OutOfDate on the last second of grace",
        policy(tcb_grace_period_seconds=100 * DAY),
        claims(tcb_status="OutOfDate"),
        NOW,
        True,
        "grace period",
    ),
    (
        "OutOfDate one second after grace",
        policy(tcb_grace_period_seconds=100 * DAY),
        claims(tcb_status="OutOfDate"),
        NOW + 1,
        False,
        "grace period ended",
    ),
    (
        "OutOfDate with an unknown TCB date",
        policy(tcb_grace_period_seconds=365 * DAY),
        claims(tcb_status="OutOfDate", tcb_date=None),
        NOW,
        False,
        "TCB date is unknown",
    ),
    (
        "OutOfDateConfigurationNeeded needs ConfigurationNeeded",
        policy(tcb_grace_period_seconds=365 * DAY),
        claims(tcb_status="OutOfDateConfigurationNeeded"),
        NOW,
        False,
        "OutOfDateConfigurationNeeded is not accepted",
    ),
    (
        "OutOfDateConfigurationNeeded in grace with ConfigurationNeeded",
        policy(
            tcb_grace_period_seconds=365 * DAY,
            accepted_tcb_statuses=("UpToDate", "ConfigurationNeeded"),
        ),
        claims(tcb_status="OutOfDateConfigurationNeeded"),
        NOW,
        True,
        "grace period",
    ),
    (
        "grace never covers SWHardeningNeeded",
        policy(tcb_grace_period_seconds=365 * DAY),
        claims(tcb_status="SWHardeningNeeded"),
        NOW,
        False,
        "SWHardeningNeeded is not accepted",
    ),
    (
        "Revoked is never accepted",
        policy(tcb_grace_period_seconds=365 * DAY),
        claims(tcb_status="Revoked"),
        NOW,
        False,
        "Revoked is not accepted",
    ),
    # advisories: strict by default, accepted one by one
    (
        "any advisory denied by default",
        BASE,
        claims(advisory_ids=("INTEL-SA-00289",)),
        NOW,
        False,
        "advisories INTEL-SA-00289 are not in the policy's accepted_advisories",
    ),
    (
        "an advisory accepted one by one",
        policy(accepted_advisories=("INTEL-SA-00289",)),
        claims(advisory_ids=("intel-sa-00289",)),
        NOW,
        True,
        "",
    ),
    (
        "accepting one advisory does not accept another",
        policy(accepted_advisories=("INTEL-SA-00289",)),
        claims(advisory_ids=("INTEL-SA-00289", "INTEL-SA-00615")),
        NOW,
        False,
        "advisories INTEL-SA-00615 are not in",
    ),
    (
        "advisory denied",
        policy(denied_advisories=("INTEL-SA-00615",), accepted_advisories=("INTEL-SA-00289",)),
        claims(advisory_ids=("INTEL-SA-00289", "intel-sa-00615")),
        NOW,
        False,
        "advisories INTEL-SA-00615 are denied",
    ),
    (
        "denied advisory inside the grace period still denies",
        policy(tcb_grace_period_seconds=365 * DAY, denied_advisories=("INTEL-SA-01192",)),
        claims(tcb_status="OutOfDate", advisory_ids=("INTEL-SA-01192",)),
        NOW,
        False,
        "INTEL-SA-01192",
    ),
    (
        "a grace period does not accept an unassessed advisory",
        policy(tcb_grace_period_seconds=365 * DAY),
        claims(tcb_status="OutOfDate", advisory_ids=("INTEL-SA-01192",)),
        NOW,
        False,
        "advisories INTEL-SA-01192 are not in",
    ),
    # collateral age
    (
        "collateral of the default maximum age",
        BASE,
        claims(collateral_issued_at=NOW - 30 * DAY),
        NOW,
        True,
        "",
    ),
    (
        "collateral one second too old",
        BASE,
        claims(collateral_issued_at=NOW - 30 * DAY - 1),
        NOW,
        False,
        "more than the policy's max_collateral_age_seconds 2592000",
    ),
    (
        "collateral age set by the policy",
        policy(max_collateral_age_seconds=DAY // 2),
        claims(collateral_issued_at=NOW - DAY),
        NOW,
        False,
        "max_collateral_age_seconds 43200",
    ),
    (
        "collateral of unknown age",
        BASE,
        claims(collateral_issued_at=None),
        NOW,
        False,
        "issue date is unknown",
    ),
    # SGX identity
    (
        "mr_enclave pinned, other enclave",
        BASE,
        claims(mr_enclave=OTHER),
        NOW,
        False,
        f"mr_enclave {OTHER[:16]}… not in the policy's list",
    ),
    (
        "mr_signer pinned",
        policy(sgx=(SgxIdentity(mr_enclave=None, mr_signer=(MRS,), isv_prod_id=(0,)),)),
        claims(mr_enclave=OTHER),
        NOW,
        True,
        "",
    ),
    (
        "mr_signer pinned, other signer",
        policy(sgx=(SgxIdentity(mr_enclave=None, mr_signer=(MRS,), isv_prod_id=(0,)),)),
        claims(mr_signer=OTHER),
        NOW,
        False,
        "mr_signer abababababababab… not in the policy's list",
    ),
    (
        "isv_prod_id pinned, other product",
        policy(sgx=(SgxIdentity(mr_enclave=(MRE,), mr_signer=None, isv_prod_id=(1, 2)),)),
        SGX,
        NOW,
        False,
        "isv_prod_id 0 not in the policy's list [1, 2]",
    ),
    (
        "min_isv_svn met",
        policy(sgx=(pin_sgx(min_isv_svn=2),)),
        SGX,
        NOW,
        True,
        "",
    ),
    (
        "min_isv_svn not met",
        policy(sgx=(pin_sgx(min_isv_svn=3),)),
        SGX,
        NOW,
        False,
        "isv_svn 2 is below the policy's minimum 3",
    ),
    (
        "exact isv_svn",
        policy(sgx=(pin_sgx(isv_svn=(1,)),)),
        SGX,
        NOW,
        False,
        "isv_svn 2 not in the policy's list [1]",
    ),
    (
        "second entry matches",
        policy(sgx=(SgxIdentity(mr_enclave=(OTHER,), mr_signer=None, isv_prod_id=None), PIN_SGX)),
        SGX,
        NOW,
        True,
        "",
    ),
    (
        "no entry matches",
        policy(
            sgx=(
                SgxIdentity(mr_enclave=(OTHER,), mr_signer=None, isv_prod_id=None),
                SgxIdentity(mr_enclave=None, mr_signer=(OTHER,), isv_prod_id=(0,)),
            )
        ),
        SGX,
        NOW,
        False,
        "matches none of the policy's 2 [[sgx]] entries (entry 1: mr_enclave",
    ),
    ("no [[tdx]] entry", policy(tdx=()), TDX, NOW, False, "no [[tdx]] entry"),
    # TDX identity
    (
        "mr_td pinned, other TD",
        BASE,
        claims(TDX, mr_td="ab" * 48),
        NOW,
        False,
        "mr_td abababababababab… not in",
    ),
    (
        "rtmr0 pinned, other firmware configuration",
        BASE,
        claims(TDX, rtmr0="ab" * 48),
        NOW,
        False,
        "rtmr0 abababababababab… not in",
    ),
    (
        "rtmr2 pinned, other kernel command line",
        BASE,
        claims(TDX, rtmr2="00" * 48),
        NOW,
        False,
        "rtmr2 0000000000000000… not in",
    ),
    (
        "mr_td and mr_config_id pinned",
        policy(tdx=(TdxIdentity(mr_td=(MRTD,), mr_config_id=(CONFIG_ID,)),)),
        TDX,
        NOW,
        True,
        "",
    ),
    (
        "mr_config_id pinned, other workload",
        policy(tdx=(TdxIdentity(mr_td=(MRTD,), mr_config_id=(CONFIG_ID,)),)),
        claims(TDX, mr_config_id="00" * 48),
        NOW,
        False,
        "mr_config_id 0000000000000000… not in",
    ),
    (
        "a TD has no mr_enclave",
        policy(tee=("sim",), sim=(PIN_SGX,)),
        claims(TDX, tee="sim"),
        NOW,
        False,
        "the quote has no mr_enclave",
    ),
]


@pytest.mark.parametrize(
    ("policy_", "claims_", "now", "allowed", "fragment"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_decide(policy_: Policy, claims_: Claims, now: int, allowed: bool, fragment: str) -> None:
    decision = policy_.decide(claims_, now)
    assert decision.allowed is allowed, decision
    assert decision.allowed == (not decision.reasons)
    if fragment:
        text = " | ".join(decision.reasons if not allowed else decision.notes)
        assert fragment in text


def test_every_rule_both_allows_and_denies() -> None:
    allowed = {case[0] for case in CASES if case[4]}
    denied = {case[0] for case in CASES if not case[4]}
    assert len(allowed) >= 10 and len(denied) >= 20


def test_all_reasons_are_reported_at_once() -> None:
    bad = claims(debug=True, tcb_status="OutOfDate", mr_enclave=OTHER, advisory_ids=("X-1",))
    decision = policy(denied_advisories=("X-1",)).decide(bad, NOW)
    assert len(decision.reasons) == 4


def test_raise_if_denied() -> None:
    policy().decide(SGX, NOW).raise_if_denied()
    with pytest.raises(AttestationDenied) as denied:
        policy().decide(SIM, NOW).raise_if_denied()
    assert denied.value.code is Code.PERMISSION_DENIED
    assert "tee sim is not accepted" in str(denied.value)


def test_decision_is_json() -> None:
    decision = policy().decide(claims(mr_enclave=OTHER), NOW)
    assert json.loads(json.dumps(decision.to_json()))["allowed"] is False


# --- secure defaults and invariants -------------------------------------------------------


def test_defaults() -> None:
    assert BASE.tee == ("sgx", "tdx")
    assert BASE.accepted_tcb_statuses == ("UpToDate",)
    assert BASE.tcb_grace_period_seconds == 0
    assert BASE.accepted_advisories == ()
    assert BASE.max_collateral_age_seconds == 30 * DAY
    assert BASE.allow_debug_insecure is False


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (lambda: SgxIdentity(mr_enclave=None, mr_signer=None, isv_prod_id=(0,)), "neither"),
        (
            lambda: SgxIdentity(mr_enclave=None, mr_signer=(MRS,), isv_prod_id=None),
            "every enclave that signer ever signed",
        ),
        (lambda: SgxIdentity(mr_enclave=("0" * 64,), mr_signer=None, isv_prod_id=None), "zero"),
        (lambda: SgxIdentity(mr_enclave=None, mr_signer=("0" * 64,), isv_prod_id=(0,)), "zero"),
        (lambda: TdxIdentity(mr_td=(MRTD,)), "any kernel"),
        (lambda: TdxIdentity(mr_td=(MRTD,), rtmr0=(RTMR,), rtmr1=(RTMR1,)), "not rtmr2"),
        (
            lambda: TdxIdentity(mr_td=None, rtmr0=(RTMR,), rtmr1=(RTMR1,), rtmr2=(RTMR2,)),
            "any firmware",
        ),
        (lambda: TdxIdentity(mr_td=None, rtmr3=("0" * 96,)), "any firmware"),
        (lambda: TdxIdentity(mr_td=None, mr_config_id=(CONFIG_ID,)), "any firmware"),
        (lambda: dataclasses.replace(PIN_TDX, rtmr3=("0" * 96,)), "all-zero"),
        (lambda: dataclasses.replace(PIN_TDX, mr_td=("0" * 96,)), "all-zero"),
        (lambda: TdxIdentity(mr_td=(MRTD,), mr_config_id=("0" * 96,)), "all-zero"),
        (lambda: policy(accepted_advisories=("intel-sa-1",)), "upper-case"),
        (lambda: policy(accepted_advisories=("ANY",)), "one by one"),
        (
            lambda: policy(accepted_advisories=("INTEL-SA-1",), denied_advisories=("INTEL-SA-1",)),
            "both accepted and denied",
        ),
        (lambda: policy(max_collateral_age_seconds=0), "positive"),
        (lambda: policy(max_collateral_age_seconds=True), "positive"),
        (lambda: SgxIdentity(mr_enclave=(), mr_signer=None, isv_prod_id=None), "non-empty"),
        (lambda: SgxIdentity(mr_enclave=("AB" * 32,), mr_signer=None, isv_prod_id=None), "hex"),
        (lambda: SgxIdentity(mr_enclave=(MRE,), mr_signer=None, isv_prod_id=(70000,)), "65535"),
        (lambda: TdxIdentity(mr_td=None), "any firmware"),
        (lambda: dataclasses.replace(PIN_TDX, mr_td=(MRE,)), "48 bytes"),
        (lambda: Policy(), "would deny everything"),
        (lambda: Policy(sgx=(PIN_SGX,), tee=("tdx",)), "would deny everything"),
        (lambda: policy(tee=()), "tee must list"),
        (lambda: policy(tee=("sgx", "sgx")), "twice"),
        (lambda: policy(tee=("sev",)), "tee must list"),
        (lambda: policy(accepted_tcb_statuses=("Revoked",)), "Revoked"),
        (lambda: policy(accepted_tcb_statuses=("Fine",)), "unknown TCB status"),
        (lambda: policy(accepted_tcb_statuses=()), "must not be empty"),
        (lambda: policy(tcb_grace_period_seconds=-1), "non-negative"),
        (lambda: policy(denied_advisories=("intel-sa-1",)), "upper-case"),
        (lambda: policy(denied_advisories=("",)), "upper-case"),
    ],
)
def test_invalid_policies_are_refused(build: Any, fragment: str) -> None:
    with pytest.raises(InvalidArgument, match=fragment):
        build()


def test_insecure_settings_log_warnings(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        policy(tee=("sim",), sim=(PIN_SGX,), allow_debug_insecure=True)
    text = caplog.text
    assert "INSECURE" in text and "allow_debug_insecure" in text


# --- the file format ----------------------------------------------------------------------

EXAMPLE = f"""
version = 1
tee = ["sgx", "tdx"]
accepted_tcb_statuses = ["UpToDate", "SWHardeningNeeded"]
tcb_grace_period_seconds = 2592000
denied_advisories = ["intel-sa-00615"]
allow_debug_insecure = false

[[sgx]]
mr_enclave = ["{MRE.upper()}"]
mr_signer = "any"
isv_prod_id = [0]
min_isv_svn = 1

[[sgx]]
mr_enclave = "any"
mr_signer = ["{MRS}"]
isv_prod_id = [0]
isv_svn = [2, 3]

[[tdx]]
mr_td = ["{MRTD}"]
mr_config_id = ["{CONFIG_ID}"]
rtmr1 = ["{RTMR1}"]
"""


def test_toml_example_parses() -> None:
    parsed = Policy.from_toml(EXAMPLE, source="policy.toml")
    assert parsed.tee == ("sgx", "tdx")
    assert parsed.accepted_tcb_statuses == ("UpToDate", "SWHardeningNeeded")
    assert parsed.tcb_grace_period_seconds == 30 * DAY
    assert parsed.denied_advisories == ("INTEL-SA-00615",)
    assert parsed.sgx == (
        SgxIdentity(mr_enclave=(MRE,), mr_signer=None, isv_prod_id=(0,), min_isv_svn=1),
        SgxIdentity(mr_enclave=None, mr_signer=(MRS,), isv_prod_id=(0,), isv_svn=(2, 3)),
    )
    assert parsed.tdx == (TdxIdentity(mr_td=(MRTD,), mr_config_id=(CONFIG_ID,), rtmr1=(RTMR1,)),)
    assert parsed.decide(SGX, NOW).allowed
    assert parsed.source == "policy.toml"


def test_round_trip_through_dict_and_json() -> None:
    parsed = Policy.from_toml(EXAMPLE)
    assert Policy.from_dict(parsed.to_dict()) == parsed
    assert Policy.from_json(json.dumps(parsed.to_dict())) == parsed


def test_load_by_suffix(tmp_path: Path) -> None:
    toml_file = tmp_path / "policy.toml"
    toml_file.write_text(EXAMPLE)
    json_file = tmp_path / "policy.json"
    json_file.write_text(json.dumps(Policy.from_toml(EXAMPLE).to_dict()))
    assert Policy.load(toml_file) == Policy.load(json_file)


def test_single_table_is_one_entry() -> None:
    parsed = Policy.from_toml(
        f'tee = ["sgx"]\n[sgx]\nmr_enclave = "{MRE}"\nmr_signer = "any"\nisv_prod_id = 0\n'
    )
    assert parsed.sgx == (SgxIdentity(mr_enclave=(MRE,), mr_signer=None, isv_prod_id=(0,)),)


SGX_ENTRY = f'[[sgx]]\nmr_enclave = ["{MRE}"]\nmr_signer = "any"\nisv_prod_id = "any"\n'


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("tee = [", "p.toml: not valid TOML"),
        ("allow_debug = true\n" + SGX_ENTRY, "p.toml: unknown setting 'allow_debug'"),
        ("version = 2\n" + SGX_ENTRY, "p.toml: version"),
        ('tee = "sgx"\n' + SGX_ENTRY, "p.toml: tee must be a list"),
        ("tcb_grace_period_seconds = true\n" + SGX_ENTRY, "tcb_grace_period_seconds"),
        ('allow_debug_insecure = "no"\n' + SGX_ENTRY, "allow_debug_insecure"),
        ("accepted_tcb_statuses = []\n" + SGX_ENTRY, "must not be empty"),
        (
            f'[[sgx]]\nmr_enclave = ["{MRE}"]\nmr_signer = "any"\n',
            'p.toml: sgx[0].isv_prod_id is required: list the accepted values, or write "any"',
        ),
        (
            f'[[sgx]]\nmr_enclave = ["{MRE}"]\nisv_prod_id = 0\n',
            "p.toml: sgx[0].mr_signer is required",
        ),
        (
            '[[sgx]]\nmr_enclave = "any"\nmr_signer = "any"\nisv_prod_id = 0\n',
            "p.toml: sgx[0]: pins neither mr_enclave nor mr_signer",
        ),
        (
            '[[sgx]]\nmr_enclave = []\nmr_signer = "any"\nisv_prod_id = 0\n',
            "p.toml: sgx[0].mr_enclave must be a non-empty list",
        ),
        (
            '[[sgx]]\nmr_enclave = ["1234"]\nmr_signer = "any"\nisv_prod_id = 0\n',
            "p.toml: sgx[0].mr_enclave: '1234' is not 32 bytes of hex",
        ),
        (SGX_ENTRY + "min_isv_svn = -1\n", "sgx[0].min_isv_svn"),
        (SGX_ENTRY + "mrenclave = 1\n", "p.toml: sgx[0]: unknown setting 'mrenclave'"),
        ('[[tdx]]\nrtmr0 = "any"\n', "p.toml: tdx[0].mr_td is required"),
        ('[[tdx]]\nmr_td = "any"\n', 'p.toml: tdx[0]: mr_td is "any"'),
        (
            f'[[tdx]]\nmr_td = ["{MRTD}"]\n',
            "p.toml: tdx[0]: pins mr_td but not rtmr0, rtmr1, rtmr2",
        ),
        (
            f'[[tdx]]\nmr_td = "any"\nrtmr3 = ["{"0" * 96}"]\n',
            'p.toml: tdx[0]: mr_td is "any"',
        ),
        (
            f'[[sgx]]\nmr_enclave = ["{"0" * 64}"]\nmr_signer = "any"\nisv_prod_id = 0\n',
            "p.toml: sgx[0]: mr_enclave pins an all-zero value",
        ),
        (
            'accepted_advisories = "INTEL-SA-00615"\n' + SGX_ENTRY,
            "accepted_advisories must be a list",
        ),
        ("max_collateral_age_seconds = -5\n" + SGX_ENTRY, "max_collateral_age_seconds"),
        ("sgx = 3\n", "sgx must be a list of tables"),
        ("", "would deny everything"),
    ],
)
def test_parse_errors_name_the_file_and_field(text: str, fragment: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        Policy.from_toml(text, source="p.toml")
    assert fragment in str(error.value)
    assert str(error.value).startswith("p.toml: ")
    assert "\n" not in str(error.value)


def test_load_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="not found"):
        Policy.load(tmp_path / "missing.toml")


# --- ra_config.json -----------------------------------------------------------------------

RA_CONFIG = {
    "verify_mr_enclave": "on",
    "verify_mr_signer": "on",
    "verify_isv_prod_id": "on",
    "verify_isv_svn": "on",
    "mrs": [
        {"mr_enclave": MRE, "mr_signer": MRS, "isv_prod_id": "0", "isv_svn": "2"},
        {"mr_enclave": OTHER, "mr_signer": MRS, "isv_prod_id": 5, "isv_svn": 0},
    ],
}


def test_ra_config_becomes_sgx_entries() -> None:
    converted = Policy.from_ra_config(json.dumps(RA_CONFIG))
    assert converted.tee == ("sgx",)
    assert converted.accepted_tcb_statuses == ("UpToDate",)
    assert converted.sgx == (
        SgxIdentity(mr_enclave=(MRE,), mr_signer=(MRS,), isv_prod_id=(0,), isv_svn=(2,)),
        SgxIdentity(mr_enclave=(OTHER,), mr_signer=(MRS,), isv_prod_id=(5,), isv_svn=(0,)),
    )


RA_CASES = [
    # CCZoo semantics: one entry must match every field whose flag is on.
    ("all on, first entry", {}, SGX, True),
    ("all on, svn differs", {}, claims(isv_svn=3), False),
    ("all on, mixed entries do not combine", {}, claims(isv_prod_id=5), False),
    ("svn off", {"verify_isv_svn": "off"}, claims(isv_svn=3), True),
    ("prod id off", {"verify_isv_prod_id": "off"}, claims(isv_prod_id=9), True),
    ("mr_enclave off", {"verify_mr_enclave": "off"}, claims(mr_enclave="cd" * 32), True),
    ("mr_signer off", {"verify_mr_signer": "off"}, claims(mr_signer="cd" * 32), True),
    ("mr_signer on, differs", {"verify_mr_enclave": "off"}, claims(mr_signer="cd" * 32), False),
]


@pytest.mark.parametrize(
    ("changes", "claims_", "allowed"),
    [case[1:] for case in RA_CASES],
    ids=[case[0] for case in RA_CASES],
)
def test_ra_config_semantics(changes: dict[str, str], claims_: Claims, allowed: bool) -> None:
    converted = Policy.from_ra_config({**RA_CONFIG, **changes})
    assert converted.decide(claims_, NOW).allowed is allowed


def test_ra_config_sgx_mrs_and_extra_keys() -> None:
    config = {k: v for k, v in RA_CONFIG.items() if k != "mrs"}
    config |= {"sgx_mrs": RA_CONFIG["mrs"], "verify_in_enclave": "on"}
    assert Policy.from_ra_config(config).sgx == Policy.from_ra_config(RA_CONFIG).sgx


def test_ra_config_template_with_empty_unverified_fields() -> None:
    config = {
        "verify_mr_enclave": "on",
        "verify_mr_signer": "off",
        "verify_isv_prod_id": "off",
        "verify_isv_svn": "off",
        "mrs": [{"mr_enclave": MRE, "mr_signer": "", "isv_prod_id": "0", "isv_svn": "0"}],
    }
    assert Policy.from_ra_config(config).sgx == (PIN_SGX,)


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        (
            {"verify_mr_enclave": "off", "verify_mr_signer": "off"},
            "neither verify_mr_enclave nor verify_mr_signer is on",
        ),
        (
            {k: "off" for k in RA_CONFIG if k.startswith("verify_")},
            "would accept any enclave",
        ),
        ({"verify_isv_svn": "yes"}, 'verify_isv_svn must be "on" or "off"'),
        ({"mrs": []}, "mrs must list at least one measurement"),
        ({"mrs": [{"mr_enclave": "00"}]}, "mrs[0].mr_enclave"),
        ({"mrs": [{"mr_enclave": MRE, "mr_signer": MRS, "isv_prod_id": "x"}]}, "isv_prod_id"),
    ],
)
def test_ra_config_errors(changes: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        Policy.from_ra_config({**RA_CONFIG, **changes}, source="ra_config.json")
    assert fragment in str(error.value)
    assert str(error.value).startswith("ra_config.json: ")


def test_ra_config_not_json() -> None:
    with pytest.raises(InvalidArgument, match="ra_config.json: not valid JSON"):
        Policy.from_ra_config("{")
