"""The attestation policy: which verified TEEs may receive a key. Pure: claims in, decision out.

`Policy.decide(claims, now)` checks every rule and returns a `Decision` with *all* the reasons
for a denial (or notes, such as a grace period in use), so an operator sees everything that
is wrong at once. It never raises on a denial; `Decision.raise_if_denied()` does
(`AttestationDenied`, PERMISSION_DENIED).

File format (TOML, read with the standard library's `tomllib`; the same structure as JSON is
accepted too, chosen by a `.json` suffix). Top-level keys come before the tables::

    version = 1                                   # optional; only 1 exists
    tee = ["sgx", "tdx"]                          # accepted TEE types (the default); add "sim"
                                                  #   only for tests/demos: INSECURE, warns
    accepted_tcb_statuses = ["UpToDate"]          # the default; dcap-qvl's status names
    tcb_grace_period_seconds = 0                  # OutOfDate accepted this long after its TCB date
    accepted_advisories = []                      # the default: a quote naming any advisory is
                                                  #   denied; list the ones you have assessed
    denied_advisories = []                        # always denied (may not also be accepted)
    max_collateral_age_seconds = 2592000          # the default (30 days): collateral issued
                                                  #   longer ago than this is refused
    allow_debug_insecure = false                  # debug enclaves/TDs: never in production
    key_lease_seconds = 0                         # 0: a released key is the server's for good;
                                                  #   N: lent for N s, renewed over the server's
                                                  #   attested session (revocable: the server
                                                  #   drops it when renewal is refused)
    keep_key_when_kbs_unreachable = false         # with a lease: keep serving past its end
                                                  #   while the KBS cannot be reached

    [[sgx]]                                       # one table per accepted enclave identity
    mr_enclave = ["33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"]
    mr_signer = "any"                             # a list of hex values, or "any"
    isv_prod_id = [0]                             # a list of integers, or "any"
    min_isv_svn = 0                               # optional (default 0)
    # isv_svn = [3]                               # optional exact list (default "any")

    [[tdx]]
    mr_td = ["91eb2b44d141d4ec..."]               # 48-byte values; required, never "any"
    rtmr0 = ["..."]                               # rtmr0..rtmr2 all pinned, or mr_config_id;
    rtmr1 = ["..."]                               #   optional: rtmr3, mr_owner,
    rtmr2 = ["..."]                               #   mr_owner_config, mr_seam

    [[sim]]                                       # the simulated TEE: SGX-shaped entries
    mr_enclave = ["<measurement hex>"]
    mr_signer = "any"
    isv_prod_id = "any"

Rules and secure defaults:

- A quote is allowed iff its TEE type is listed in `tee`, it is not a debug TEE (unless
  `allow_debug_insecure`), its TCB status is accepted (or OutOfDate within the grace period),
  none of its advisories is denied, and its identity matches at least one entry of its TEE's
  table array (`[[sgx]]`, `[[tdx]]` or `[[sim]]`; "sim" claims are matched against `[[sim]]`
  only, never against `[[sgx]]`).
- Every entry must identify a workload, or the policy does not load (a policy that admits
  workloads nobody chose is worse than none):
  - `[[sgx]]` / `[[sim]]`: `mr_enclave`, `mr_signer` and `isv_prod_id` are required and "any"
    must be written out; either `mr_enclave` is pinned (one enclave build), or `mr_signer`
    *and* `isv_prod_id` are (one product of one signer; SGX's own sealing identity). A signer
    alone would admit every enclave that signer ever signed.
  - `[[tdx]]`: `mr_td` (the TD's firmware) is pinned, and either `rtmr0`, `rtmr1` and `rtmr2`
    all are (firmware configuration, kernel and command line, as measured boot extends them)
    or `mr_config_id` is (the workload identity a host sets and the TD's firmware checks, as
    CoCo peer pods use it). `mr_td` alone admits any kernel and any workload on that firmware.
  - No pinned value may be all zeros: an all-zero measurement is what a register holds when
    nothing was measured into it, so it identifies nothing (e.g. `mr_td = "any"` with an
    all-zero `rtmr3` admitted the real TDX test vector).
  Empty lists are refused (they would silently deny everything).
- TCB status: only "UpToDate" by default. "Revoked" can never be accepted. dcap-qvl's overall
  status already folds in the Quoting Enclave's status.
- Advisories: strict by default, as Intel's appraisal policies are: a quote whose TCB level
  names any security advisory is denied unless every advisory it names is listed, one by
  one, in `accepted_advisories` (after the operator has assessed it). `denied_advisories`
  names advisories that are denied whatever else the policy says; listing one in both is an
  error.
- Collateral age: the TCB Info and QE Identity the quote was verified against must have been
  issued at most `max_collateral_age_seconds` before the decision (default 30 days, the
  interval at which Intel's PCS reissues them; lower it to demand fresher collateral). The
  verifier already refuses collateral past its `nextUpdate`.
- Grace period: a quote whose status is "OutOfDate" (or "OutOfDateConfigurationNeeded", if
  "ConfigurationNeeded" is accepted) is allowed while `now <= tcb_date +
  tcb_grace_period_seconds`, where `tcb_date` is the `tcbDate` of the TCB level the platform
  matched (Intel's "TCB level date tag", as dcap-qvl's own `platform_grace_period` uses it).
  That date is when that level was current, not when it went out of date, so the grace ends
  early rather than late. Its advisories still go through the advisory rules: a grace period
  admits an old TCB level, not an unassessed advisory.
- Unknown keys are errors (a misspelt `allow_debug` must not be silently ignored). Parse
  errors are `InvalidArgument` naming the file and the field.

`Policy.from_ra_config(...)` converts the seed's `ra_config.json` (Intel CCZoo's
tensorflow-serving-cluster secret-provisioning format) — see its docstring.

Denial reasons are for the operator (the KBS writes them to its audit log); the KBS tells the
TEE only that the policy denied it.

Immutable and thread-safe; `decide` is a pure function of (policy, claims, now).
"""

from __future__ import annotations

import json
import logging
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from sealserve.attestation.claims import TCB_STATUSES, TEE_TYPES, Claims, format_time
from sealserve.attestation.errors import AttestationDenied
from sealserve.errors import InvalidArgument
from sealserve.fsio import read_user_file

log = logging.getLogger(__name__)

ANY = "any"
POLICY_VERSION = 1
_GRACE_STATUSES = {"OutOfDate": None, "OutOfDateConfigurationNeeded": "ConfigurationNeeded"}
_SGX_HEX_FIELDS = {"mr_enclave": 32, "mr_signer": 32}
_TDX_HEX_FIELDS = (
    "mr_td",
    "rtmr0",
    "rtmr1",
    "rtmr2",
    "rtmr3",
    "mr_config_id",
    "mr_owner",
    "mr_owner_config",
    "mr_seam",
)
_TDX_MEASUREMENT_SIZE = 48
#: Intel's PCS reissues TCB Info and QE Identity with a 30-day `nextUpdate`.
DEFAULT_MAX_COLLATERAL_AGE_SECONDS = 30 * 86400
MIN_KEY_LEASE_SECONDS = 4  # servers renew at half the lease: shorter ones are for tests

HexPin = tuple[str, ...] | None  # None = "any"
IntPin = tuple[int, ...] | None


def _short(value: str) -> str:
    return value[:16] + "…" if len(value) > 16 else value


def _shown(pin: HexPin | IntPin) -> str:
    return ANY if pin is None else "[" + ", ".join(str(v) for v in pin) + "]"


# --- identities -------------------------------------------------------------------------


@dataclass(frozen=True)
class SgxIdentity:
    """One accepted SGX (or simulated) enclave identity. `None` pins mean "any"."""

    mr_enclave: HexPin
    mr_signer: HexPin
    isv_prod_id: IntPin
    isv_svn: IntPin = None
    min_isv_svn: int = 0

    def __post_init__(self) -> None:
        if self.mr_enclave is None and self.mr_signer is None:
            raise InvalidArgument(
                "pins neither mr_enclave nor mr_signer, so it would accept any enclave: "
                "pin mr_enclave, or mr_signer and isv_prod_id"
            )
        if self.mr_enclave is None and self.isv_prod_id is None:
            raise InvalidArgument(
                "pins mr_signer but not isv_prod_id, so it would accept every enclave that "
                "signer ever signed: pin mr_enclave, or isv_prod_id as well"
            )
        for name, size in _SGX_HEX_FIELDS.items():
            _check_hex_pin(getattr(self, name), name, size)
        _check_int_pin(self.isv_prod_id, "isv_prod_id")
        _check_int_pin(self.isv_svn, "isv_svn")
        if not _is_u16(self.min_isv_svn):
            raise InvalidArgument("min_isv_svn must be an integer from 0 to 65535")

    def mismatches(self, claims: Claims) -> list[str]:
        out: list[str] = []
        for name in _SGX_HEX_FIELDS:
            _match_hex(out, name, getattr(self, name), getattr(claims, name))
        _match_int(out, "isv_prod_id", self.isv_prod_id, claims.isv_prod_id)
        _match_int(out, "isv_svn", self.isv_svn, claims.isv_svn)
        if self.min_isv_svn and (claims.isv_svn is None or claims.isv_svn < self.min_isv_svn):
            out.append(f"isv_svn {claims.isv_svn} is below the policy's minimum {self.min_isv_svn}")
        return out

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mr_enclave": _pin_out(self.mr_enclave),
            "mr_signer": _pin_out(self.mr_signer),
            "isv_prod_id": _pin_out(self.isv_prod_id),
        }
        if self.isv_svn is not None:
            out["isv_svn"] = list(self.isv_svn)
        if self.min_isv_svn:
            out["min_isv_svn"] = self.min_isv_svn
        return out


@dataclass(frozen=True)
class TdxIdentity:
    """One accepted TD identity (48-byte measurements as hex). `None` pins mean "any"."""

    mr_td: HexPin
    rtmr0: HexPin = None
    rtmr1: HexPin = None
    rtmr2: HexPin = None
    rtmr3: HexPin = None
    mr_config_id: HexPin = None
    mr_owner: HexPin = None
    mr_owner_config: HexPin = None
    mr_seam: HexPin = None

    def __post_init__(self) -> None:
        if self.mr_td is None:
            raise InvalidArgument(
                'mr_td is "any", so it would accept a TD on any firmware: list the accepted '
                "mr_td values"
            )
        boot = ("rtmr0", "rtmr1", "rtmr2")
        if self.mr_config_id is None and any(getattr(self, n) is None for n in boot):
            missing = ", ".join(n for n in boot if getattr(self, n) is None)
            raise InvalidArgument(
                f"pins mr_td but not {missing}, so it would accept any kernel and workload on "
                "that firmware: pin rtmr0, rtmr1 and rtmr2 (or mr_config_id)"
            )
        for name in _TDX_HEX_FIELDS:
            _check_hex_pin(getattr(self, name), name, _TDX_MEASUREMENT_SIZE)

    def mismatches(self, claims: Claims) -> list[str]:
        out: list[str] = []
        for name in _TDX_HEX_FIELDS:
            _match_hex(out, name, getattr(self, name), getattr(claims, name))
        return out

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mr_td": _pin_out(self.mr_td)}
        for name in _TDX_HEX_FIELDS[1:]:
            if getattr(self, name) is not None:
                out[name] = list(getattr(self, name))
        return out


def _pin_out(pin: HexPin | IntPin) -> Any:
    return ANY if pin is None else list(pin)


def _is_u16(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0xFFFF


def _check_hex_pin(pin: HexPin, name: str, size: int) -> None:
    if pin is None:
        return
    if not isinstance(pin, tuple) or not pin:
        raise InvalidArgument(f'{name} must be a non-empty list of hex values or "any"')
    for value in pin:
        if not isinstance(value, str) or not re.fullmatch(f"[0-9a-f]{{{2 * size}}}", value):
            raise InvalidArgument(
                f"{name} value {value!r} is not {size} bytes of lower-case hex ({2 * size} digits)"
            )
        if not value.strip("0"):
            raise InvalidArgument(
                f"{name} pins an all-zero value, which is what the register holds when nothing "
                "was measured into it: it identifies no workload"
            )


def _check_int_pin(pin: IntPin, name: str) -> None:
    if pin is None:
        return
    if not isinstance(pin, tuple) or not pin or not all(_is_u16(v) for v in pin):
        raise InvalidArgument(f'{name} must be a non-empty list of integers 0..65535 or "any"')


def _match_hex(out: list[str], name: str, pin: HexPin, value: str | None) -> None:
    if pin is None:
        return
    if value is None:
        out.append(f"the quote has no {name}, which the policy pins")
    elif value not in pin:
        out.append(f"{name} {_short(value)} not in the policy's list")


def _match_int(out: list[str], name: str, pin: IntPin, value: int | None) -> None:
    if pin is None:
        return
    if value is None:
        out.append(f"the quote has no {name}, which the policy pins")
    elif value not in pin:
        out.append(f"{name} {value} not in the policy's list {_shown(pin)}")


# --- decision ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """The outcome of `Policy.decide`: allowed iff there is no reason to deny."""

    allowed: bool
    reasons: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def raise_if_denied(self) -> None:
        if not self.allowed:
            raise AttestationDenied(
                "attestation policy denied the TEE: " + "; ".join(self.reasons),
                reasons=self.reasons,
            )

    def to_json(self) -> dict[str, Any]:
        return {"allowed": self.allowed, "reasons": list(self.reasons), "notes": list(self.notes)}


# --- the policy -------------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    """An attestation policy (see the module docstring for the rules and the file format)."""

    sgx: tuple[SgxIdentity, ...] = ()
    tdx: tuple[TdxIdentity, ...] = ()
    sim: tuple[SgxIdentity, ...] = ()
    tee: tuple[str, ...] = ("sgx", "tdx")
    accepted_tcb_statuses: tuple[str, ...] = ("UpToDate",)
    tcb_grace_period_seconds: int = 0
    accepted_advisories: tuple[str, ...] = ()
    denied_advisories: tuple[str, ...] = ()
    max_collateral_age_seconds: int = DEFAULT_MAX_COLLATERAL_AGE_SECONDS
    allow_debug_insecure: bool = False
    key_lease_seconds: int = 0
    keep_key_when_kbs_unreachable: bool = False
    #: where the policy came from, for messages ("policy.toml")
    source: str = field(default="policy", compare=False)

    def __post_init__(self) -> None:
        if not self.tee or any(t not in TEE_TYPES for t in self.tee):
            raise InvalidArgument(f"tee must list some of {', '.join(TEE_TYPES)}")
        if len(set(self.tee)) != len(self.tee):
            raise InvalidArgument("tee lists a TEE type twice")
        if not self.accepted_tcb_statuses:
            raise InvalidArgument("accepted_tcb_statuses must not be empty")
        for status in self.accepted_tcb_statuses:
            if status not in TCB_STATUSES:
                raise InvalidArgument(
                    f"unknown TCB status {status!r} (one of {', '.join(TCB_STATUSES[:-1])})"
                )
            if status == "Revoked":
                raise InvalidArgument("TCB status Revoked can never be accepted")
        grace = self.tcb_grace_period_seconds
        if isinstance(grace, bool) or not isinstance(grace, int) or grace < 0:
            raise InvalidArgument("tcb_grace_period_seconds must be a non-negative integer")
        for name in ("accepted_advisories", "denied_advisories"):
            for advisory in getattr(self, name):
                normal = advisory.strip().upper() if isinstance(advisory, str) else ""
                if not normal or advisory != normal or normal == ANY.upper():
                    raise InvalidArgument(
                        f"{name}: {advisory!r} must be an upper-case advisory id like "
                        "INTEL-SA-00615 (each advisory is accepted one by one)"
                    )
        both = sorted(set(self.accepted_advisories) & set(self.denied_advisories))
        if both:
            raise InvalidArgument(f"advisory {both[0]} is both accepted and denied")
        age = self.max_collateral_age_seconds
        if isinstance(age, bool) or not isinstance(age, int) or age <= 0:
            raise InvalidArgument("max_collateral_age_seconds must be a positive integer")
        if not isinstance(self.allow_debug_insecure, bool):
            raise InvalidArgument("allow_debug_insecure must be true or false")
        lease = self.key_lease_seconds
        if isinstance(lease, bool) or not isinstance(lease, int) or not 0 <= lease <= 31_536_000:
            raise InvalidArgument("key_lease_seconds must be 0 (no lease) to 31536000 (a year)")
        if 0 < lease < MIN_KEY_LEASE_SECONDS:
            raise InvalidArgument(f"key_lease_seconds must be at least {MIN_KEY_LEASE_SECONDS}")
        if not isinstance(self.keep_key_when_kbs_unreachable, bool):
            raise InvalidArgument("keep_key_when_kbs_unreachable must be true or false")
        if not any(self.identities(t) for t in self.tee):
            raise InvalidArgument(
                "the policy has no [[sgx]], [[tdx]] or [[sim]] entry for any TEE type it "
                f"accepts ({', '.join(self.tee)}), so it would deny everything"
            )
        if "sim" in self.tee:
            log.warning(
                'attestation policy %s accepts the simulated TEE (tee = "sim"): INSECURE, '
                "no hardware protects the keys it releases; for tests and demos only",
                self.source,
            )
        if self.allow_debug_insecure:
            log.warning(
                "attestation policy %s sets allow_debug_insecure: debug enclaves/TDs expose "
                "their memory to the host; never use this in production",
                self.source,
            )

    def identities(self, tee: str) -> tuple[SgxIdentity | TdxIdentity, ...]:
        """The entries a quote of TEE type `tee` must match one of."""
        if tee == "sgx":
            return self.sgx
        if tee == "tdx":
            return self.tdx
        if tee == "sim":
            return self.sim
        return ()

    def decide(self, claims: Claims, now: int) -> Decision:
        """Whether `claims` (from `verify_quote`) are acceptable at unix time `now`."""
        reasons: list[str] = []
        notes: list[str] = []
        tee_ok = claims.tee in self.tee
        if not tee_ok:
            reasons.append(
                f"tee {claims.tee} is not accepted by the policy (accepted: {', '.join(self.tee)})"
            )
        if claims.debug and not self.allow_debug_insecure:
            reasons.append("the TEE runs in debug mode (allow_debug_insecure is false)")
        self._check_tcb(claims, now, reasons, notes)
        self._check_advisories(claims, reasons)
        self._check_collateral_age(claims, now, reasons)
        if tee_ok:
            self._check_identity(claims, reasons)
        return Decision(allowed=not reasons, reasons=tuple(reasons), notes=tuple(notes))

    def _check_tcb(self, claims: Claims, now: int, reasons: list[str], notes: list[str]) -> None:
        status = claims.tcb_status
        if status in self.accepted_tcb_statuses:
            return
        accepted = ", ".join(self.accepted_tcb_statuses)
        needs = _GRACE_STATUSES.get(status, "")
        grace = self.tcb_grace_period_seconds
        if needs == "" or grace == 0 or (needs and needs not in self.accepted_tcb_statuses):
            reasons.append(f"TCB status {status} is not accepted (accepted: {accepted})")
            return
        if claims.tcb_date is None:
            reasons.append(
                f"TCB status {status} is not accepted and its TCB date is unknown, so the "
                "grace period cannot apply"
            )
            return
        until = claims.tcb_date + grace
        if now <= until:
            notes.append(
                f"TCB status {status} accepted in its grace period until {format_time(until)} "
                f"(TCB date {format_time(claims.tcb_date)})"
            )
        else:
            reasons.append(
                f"TCB status {status} is not accepted and its grace period ended "
                f"{format_time(until)} (TCB date {format_time(claims.tcb_date)} + {grace} s)"
            )

    def _check_advisories(self, claims: Claims, reasons: list[str]) -> None:
        named = sorted({a.strip().upper() for a in claims.advisory_ids})
        denied = [a for a in named if a in self.denied_advisories]
        if denied:
            reasons.append(f"advisories {', '.join(denied)} are denied by the policy")
        unassessed = [a for a in named if a not in self.accepted_advisories and a not in denied]
        if unassessed:
            reasons.append(
                f"advisories {', '.join(unassessed)} are not in the policy's accepted_advisories"
            )

    def _check_collateral_age(self, claims: Claims, now: int, reasons: list[str]) -> None:
        issued = claims.collateral_issued_at
        if issued is None:
            reasons.append("the collateral's issue date is unknown, so its age cannot be checked")
            return
        age = now - issued
        if age > self.max_collateral_age_seconds:
            reasons.append(
                f"the collateral was issued {format_time(issued)}, {age} s ago, more than the "
                f"policy's max_collateral_age_seconds {self.max_collateral_age_seconds}"
            )

    def _check_identity(self, claims: Claims, reasons: list[str]) -> None:
        entries = self.identities(claims.tee)
        if not entries:
            reasons.append(f"the policy has no [[{claims.tee}]] entry, so no identity matches")
            return
        mismatches = [entry.mismatches(claims) for entry in entries]
        if all(mismatches):
            if len(mismatches) == 1:
                reasons.extend(mismatches[0])
            else:
                each = " | ".join(
                    f"entry {i}: {'; '.join(m)}" for i, m in enumerate(mismatches, start=1)
                )
                reasons.append(
                    f"{claims.tee} identity matches none of the policy's {len(entries)} "
                    f"[[{claims.tee}]] entries ({each})"
                )

    # --- reading and writing ------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The policy in its file structure (JSON-ready; `from_dict` reads it back)."""
        out: dict[str, Any] = {
            "version": POLICY_VERSION,
            "tee": list(self.tee),
            "accepted_tcb_statuses": list(self.accepted_tcb_statuses),
            "tcb_grace_period_seconds": self.tcb_grace_period_seconds,
            "accepted_advisories": list(self.accepted_advisories),
            "denied_advisories": list(self.denied_advisories),
            "max_collateral_age_seconds": self.max_collateral_age_seconds,
            "allow_debug_insecure": self.allow_debug_insecure,
            "key_lease_seconds": self.key_lease_seconds,
            "keep_key_when_kbs_unreachable": self.keep_key_when_kbs_unreachable,
        }
        for name in ("sgx", "tdx", "sim"):
            entries = getattr(self, name)
            if entries:
                out[name] = [entry.to_dict() for entry in entries]
        return out

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Policy:
        """A policy file: JSON if it ends in `.json`, TOML otherwise."""
        path = Path(path)
        raw = read_user_file(path, "attestation policy")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidArgument(f"{path}: not UTF-8 text") from None
        if path.suffix.lower() == ".json":
            return cls.from_json(text, source=str(path))
        return cls.from_toml(text, source=str(path))

    @classmethod
    def from_toml(cls, text: str, *, source: str = "policy.toml") -> Policy:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise InvalidArgument(f"{source}: not valid TOML: {err}") from None
        return cls.from_dict(data, source=source)

    @classmethod
    def from_json(cls, text: str, *, source: str = "policy.json") -> Policy:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise InvalidArgument(f"{source}: not valid JSON: {err}") from None
        return cls.from_dict(data, source=source)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "policy") -> Policy:
        if not isinstance(data, Mapping):
            raise InvalidArgument(f"{source}: a policy must be a table of settings")
        known = {f.name for f in fields(cls)} - {"source"} | {"version"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidArgument(
                f"{source}: unknown setting {unknown[0]!r} (known: {', '.join(sorted(known))})"
            )
        version = data.get("version", POLICY_VERSION)
        if version != POLICY_VERSION or isinstance(version, bool):
            raise InvalidArgument(f"{source}: version: only version {POLICY_VERSION} exists")
        kwargs: dict[str, Any] = {"source": source}
        try:
            if "tee" in data:
                kwargs["tee"] = _strings(data["tee"], "tee")
            if "accepted_tcb_statuses" in data:
                kwargs["accepted_tcb_statuses"] = _strings(
                    data["accepted_tcb_statuses"], "accepted_tcb_statuses"
                )
            if "tcb_grace_period_seconds" in data:
                kwargs["tcb_grace_period_seconds"] = data["tcb_grace_period_seconds"]
            for name in ("accepted_advisories", "denied_advisories"):
                if name in data:
                    kwargs[name] = tuple(
                        a.strip().upper() for a in _strings(data[name], name, empty=True)
                    )
            if "max_collateral_age_seconds" in data:
                kwargs["max_collateral_age_seconds"] = data["max_collateral_age_seconds"]
            for name in (
                "allow_debug_insecure",
                "key_lease_seconds",
                "keep_key_when_kbs_unreachable",
            ):
                if name in data:
                    kwargs[name] = data[name]
            kwargs["sgx"] = _entries(data, "sgx", _sgx_entry)
            kwargs["sim"] = _entries(data, "sim", _sgx_entry)
            kwargs["tdx"] = _entries(data, "tdx", _tdx_entry)
            return cls(**kwargs)
        except InvalidArgument as err:
            raise InvalidArgument(f"{source}: {err.message}") from None

    @classmethod
    def from_ra_config(
        cls, config: str | bytes | Mapping[str, Any], *, source: str = "ra_config.json"
    ) -> Policy:
        """The policy equivalent to a CCZoo / seed `ra_config.json`.

        Shape assumed (Intel CCZoo tensorflow-serving-cluster `secret_prov_pf/ra_config.json`,
        also its `dynamic_config.json` with `sgx_mrs`)::

            {"verify_mr_enclave": "on", "verify_mr_signer": "on",
             "verify_isv_prod_id": "on", "verify_isv_svn": "on",
             "mrs": [{"mr_enclave": "<64 hex>", "mr_signer": "<64 hex>",
                      "isv_prod_id": "0", "isv_svn": "0"}]}

        CCZoo accepts an enclave if *one* entry of `mrs` matches on every field whose flag is
        "on"; ids may be strings or numbers, and `isv_svn` is compared for equality. Each entry
        becomes one `[[sgx]]` entry with exactly those semantics (an "off" field becomes
        "any"; `isv_svn` an exact list, not a minimum). Differences, all deliberate:

        - CCZoo with every flag "off" accepts any enclave; here that (or pinning neither
          mr_enclave nor mr_signer, or mr_signer without isv_prod_id) is an error.
        - The flags must be "on" or "off" (CCZoo treats any other text as off).
        - ra_config has no TCB settings; the result accepts only UpToDate platforms and
          rejects debug enclaves (Gramine RA-TLS's defaults without its `*_INSECURE`
          variables). Other keys (`verify_in_enclave`, `verify_enclave_debuggable`, ...)
          are ignored with a log line.
        """
        if isinstance(config, str | bytes):
            try:
                data = json.loads(config)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise InvalidArgument(f"{source}: not valid JSON: {err}") from None
        else:
            data = config
        if not isinstance(data, Mapping):
            raise InvalidArgument(f"{source}: expected a JSON object")
        flags: dict[str, bool] = {}
        for name in ("mr_enclave", "mr_signer", "isv_prod_id", "isv_svn"):
            value = data.get(f"verify_{name}", "off")
            if value not in ("on", "off"):
                raise InvalidArgument(f'{source}: verify_{name} must be "on" or "off"')
            flags[name] = value == "on"
        if not (flags["mr_enclave"] or flags["mr_signer"]):
            raise InvalidArgument(
                f"{source}: neither verify_mr_enclave nor verify_mr_signer is on, which would "
                "accept any enclave; turn at least one of them on"
            )
        if not flags["mr_enclave"] and not flags["isv_prod_id"]:
            raise InvalidArgument(
                f"{source}: verify_mr_signer without verify_isv_prod_id would accept every "
                "enclave that signer ever signed; turn on verify_mr_enclave or verify_isv_prod_id"
            )
        key = "mrs" if "mrs" in data else "sgx_mrs"
        measurements = data.get(key)
        if not isinstance(measurements, list) or not measurements:
            raise InvalidArgument(f"{source}: mrs must list at least one measurement")
        ignored = sorted(set(data) - {key} - {f"verify_{n}" for n in flags})
        if ignored:
            log.info("%s: ignoring settings sealserve has no use for: %s", source, ignored)
        entries = []
        for i, item in enumerate(measurements):
            where = f"{key}[{i}]"
            if not isinstance(item, Mapping):
                raise InvalidArgument(f"{source}: {where} must be an object")
            pins: dict[str, Any] = {}
            for name in ("mr_enclave", "mr_signer"):
                pins[name] = (
                    (_hex(item.get(name), f"{where}.{name}", 32, source),) if flags[name] else None
                )
            for name in ("isv_prod_id", "isv_svn"):
                pins[name] = (
                    (_u16_text(item.get(name), f"{where}.{name}", source),) if flags[name] else None
                )
            entries.append(SgxIdentity(**pins))
        return cls(sgx=tuple(entries), tee=("sgx",), source=source)


# --- parsing helpers (errors name the field; `from_dict` adds the file) ------------------


def _strings(value: Any, name: str, *, empty: bool = False) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise InvalidArgument(f"{name} must be a list of strings")
    if not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"{name} must be a list of strings")
    if not value and not empty:
        raise InvalidArgument(f"{name} must not be empty")
    return tuple(value)


def _entries(data: Mapping[str, Any], name: str, parse: Any) -> tuple[Any, ...]:
    value = data.get(name, [])
    if isinstance(value, Mapping):  # `[sgx]` written instead of `[[sgx]]`: one entry
        value = [value]
    if not isinstance(value, list):
        raise InvalidArgument(f"{name} must be a list of tables ([[{name}]])")
    out = []
    for i, item in enumerate(value):
        where = f"{name}[{i}]"
        if not isinstance(item, Mapping):
            raise InvalidArgument(f"{where} must be a table")
        try:
            out.append(parse(item, where))
        except InvalidArgument as err:
            message = err.message if err.message.startswith(where) else f"{where}: {err.message}"
            raise InvalidArgument(message) from None
    return tuple(out)


def _hex_pin_field(item: Mapping[str, Any], name: str, size: int, where: str, required: bool):
    if name not in item:
        if required:
            raise InvalidArgument(
                f'{where}.{name} is required: list the accepted values, or write "any"'
            )
        return None
    value = item[name]
    if value == ANY:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise InvalidArgument(f'{where}.{name} must be a non-empty list of hex values or "any"')
    return tuple(_hex(v, f"{where}.{name}", size) for v in value)


def _hex(value: Any, where: str, size: int, source: str | None = None) -> str:
    prefix = f"{source}: " if source else ""
    if not isinstance(value, str):
        raise InvalidArgument(f"{prefix}{where} must be a hex string")
    text = value.strip().lower()
    if not re.fullmatch(f"[0-9a-f]{{{2 * size}}}", text):
        raise InvalidArgument(
            f"{prefix}{where}: {value!r} is not {size} bytes of hex ({2 * size} digits)"
        )
    return text


def _int_pin_field(item: Mapping[str, Any], name: str, where: str, required: bool):
    if name not in item:
        if required:
            raise InvalidArgument(
                f'{where}.{name} is required: list the accepted values, or write "any"'
            )
        return None
    value = item[name]
    if value == ANY:
        return None
    if _is_u16(value):
        value = [value]
    if not isinstance(value, list) or not value or not all(_is_u16(v) for v in value):
        raise InvalidArgument(f'{where}.{name} must be a non-empty list of 0..65535 or "any"')
    return tuple(value)


def _u16_text(value: Any, where: str, source: str) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if not _is_u16(value):
        raise InvalidArgument(f"{source}: {where} must be an integer from 0 to 65535")
    return int(value)


def _no_unknown(item: Mapping[str, Any], known: Sequence[str], where: str) -> None:
    unknown = sorted(set(item) - set(known))
    if unknown:
        raise InvalidArgument(
            f"{where}: unknown setting {unknown[0]!r} (known: {', '.join(known)})"
        )


def _sgx_entry(item: Mapping[str, Any], where: str) -> SgxIdentity:
    _no_unknown(item, ("mr_enclave", "mr_signer", "isv_prod_id", "isv_svn", "min_isv_svn"), where)
    min_svn = item.get("min_isv_svn", 0)
    if not _is_u16(min_svn):
        raise InvalidArgument(f"{where}.min_isv_svn must be an integer from 0 to 65535")
    return SgxIdentity(
        mr_enclave=_hex_pin_field(item, "mr_enclave", 32, where, True),
        mr_signer=_hex_pin_field(item, "mr_signer", 32, where, True),
        isv_prod_id=_int_pin_field(item, "isv_prod_id", where, True),
        isv_svn=_int_pin_field(item, "isv_svn", where, False),
        min_isv_svn=min_svn,
    )


def _tdx_entry(item: Mapping[str, Any], where: str) -> TdxIdentity:
    _no_unknown(item, _TDX_HEX_FIELDS, where)
    return TdxIdentity(
        **{
            name: _hex_pin_field(item, name, _TDX_MEASUREMENT_SIZE, where, name == "mr_td")
            for name in _TDX_HEX_FIELDS
        }
    )
