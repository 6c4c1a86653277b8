"""DCAP collateral: the signed TCB Info, QE Identity and CRLs a quote is verified against, and
a cache that fetches it from a PCCS / Intel PCS once per platform family until it expires.

`Collateral` wraps dcap-qvl's `QuoteCollateralV3` (its serde JSON form: PEM chains as strings,
CRLs and signatures as hex) together with what a cache needs to know about it, read from the
collateral itself: which platform family it is for (FMSPC, PCK CA, TEE type) and the time
window in which it verifies (`not_before` .. `expires_at`, unix seconds, both inclusive).

Time window (matches what dcap-qvl enforces, see the DCAP vectors' README):
- lower bound: max(TCBInfo.issueDate, QEIdentity.issueDate) — dcap-qvl refuses collateral
  "issued in the future";
- upper bound: the earliest of TCBInfo.nextUpdate and QEIdentity.nextUpdate (inclusive), each
  CRL's nextUpdate (exclusive, so minus one second) and the notAfter of the issuer
  certificates shipped in the collateral.

`CollateralCache` keys collateral by (FMSPC, PCK CA, TEE), the unit Intel's PCS serves TCB
Info and CRLs in (PCS API v4: `/{sgx|tdx}/certification/v4/tcb?fmspc=..`,
`/pckcrl?ca=processor|platform`). A PCCS answer may also carry the platform's own PCK
certificate chain (`pck_certificate_chain`); that is per machine, not per FMSPC, so the cache
drops it: every quote must then embed its PCK chain (certification data type 5), which is
what Gramine, configfs-tsm and the simulated TEE produce.

Abuse: a fetch is the one thing an anonymous quote can make the verifier do on the network,
so `CollateralCache` fetches only for a quote whose embedded PCK certificate chain verifies
up to a trusted root (Intel's, or a root the caller adds) — `check_pck_chain` — and caches
failures per key for `failure_ttl_seconds` (30 s), so a stream of bogus or unlucky quotes
costs at most one fetch per platform family per failure window.

Thread safety: `Collateral` is immutable. `CollateralCache` is for one asyncio event loop (it
serialises fetches per key with asyncio locks); it is not thread-safe.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import dcap_qvl
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding

from sealserve.attestation.errors import AttestationFailed, AttestationUnavailable, one_line
from sealserve.errors import FailedPrecondition, InvalidArgument
from sealserve.fsio import atomic_output_file, read_user_file

log = logging.getLogger(__name__)

# A PCCS answer's per-machine extra (dcap-qvl `QuoteCollateralV3`, optional).
_PCK_CHAIN_FIELD = "pck_certificate_chain"


def _rfc3339(value: Any, what: str) -> int:
    if not isinstance(value, str):
        raise ValueError(f"{what} is missing")
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if moment.tzinfo is None:  # Intel always writes "Z"; never read a local time
        raise ValueError(f"{what} {value!r} has no time zone")
    return int(moment.timestamp())


@dataclass(frozen=True)
class CollateralKey:
    """What collateral is for: a platform family (FMSPC, upper-case hex), the PCK CA that
    issued its PCK certificates ("processor" | "platform") and the TEE ("sgx" | "tdx")."""

    fmspc: str
    ca: str
    tee: str

    def file_name(self) -> str:
        return f"{self.tee}-{self.ca}-{self.fmspc}.json"


@dataclass(frozen=True)
class Collateral:
    """DCAP collateral plus its identity and validity window.

    Build with `Collateral.from_json(text)` / `from_dcap(obj)` or `load_collateral(path)`.
    `dcap` is the object dcap-qvl verifies against; `json_text` its serde JSON form. Nothing
    here is authenticated yet: dcap-qvl checks every signature when it verifies a quote, so
    the dates read here only decide when to fetch again, never whether to trust.
    """

    json_text: str = field(repr=False)
    dcap: dcap_qvl.QuoteCollateralV3 = field(repr=False, compare=False)
    key: CollateralKey
    not_before: int
    expires_at: int
    tcb_evaluation_data_number: int

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str = "collateral") -> Collateral:
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidArgument(f"{source} is not UTF-8 JSON") from None
        try:
            dcap = dcap_qvl.QuoteCollateralV3.from_json(text)
        except ValueError as err:
            raise InvalidArgument(f"{source} is not DCAP collateral: {one_line(err)}") from None
        return cls._describe(dcap, text, source)

    @classmethod
    def from_dcap(
        cls, dcap: dcap_qvl.QuoteCollateralV3, *, source: str = "collateral"
    ) -> Collateral:
        return cls._describe(dcap, dcap.to_json(), source)

    @classmethod
    def _describe(cls, dcap: dcap_qvl.QuoteCollateralV3, text: str, source: str) -> Collateral:
        try:
            tcb_info = json.loads(dcap.tcb_info)
            qe_identity = json.loads(dcap.qe_identity)
            tee = {"SGX": "sgx", "TDX": "tdx"}[str(tcb_info.get("id", "SGX")).upper()]
            fmspc = str(tcb_info["fmspc"]).upper()
            if not re.fullmatch(r"[0-9A-F]{12}", fmspc):
                raise ValueError(f"TCB Info fmspc {fmspc!r} is not 6 bytes of hex")
            pck_crl = x509.load_der_x509_crl(dcap.pck_crl)
            root_crl = x509.load_der_x509_crl(dcap.root_ca_crl)
            ca = _pck_ca_kind(pck_crl.issuer)
            not_before = max(
                _rfc3339(tcb_info.get("issueDate"), "TCB Info issueDate"),
                _rfc3339(qe_identity.get("issueDate"), "QE Identity issueDate"),
            )
            ends = [
                _rfc3339(tcb_info.get("nextUpdate"), "TCB Info nextUpdate"),
                _rfc3339(qe_identity.get("nextUpdate"), "QE Identity nextUpdate"),
            ]
            for crl in (pck_crl, root_crl):
                if crl.next_update_utc is None:
                    raise ValueError("a CRL has no nextUpdate")
                # dcap-qvl (webpki) treats a CRL as expired *at* nextUpdate.
                ends.append(int(crl.next_update_utc.timestamp()) - 1)
            for chain in (
                dcap.pck_crl_issuer_chain,
                dcap.tcb_info_issuer_chain,
                dcap.qe_identity_issuer_chain,
            ):
                for cert in x509.load_pem_x509_certificates(chain.encode()):
                    ends.append(int(cert.not_valid_after_utc.timestamp()))
            evaluation = int(tcb_info.get("tcbEvaluationDataNumber", 0))
        except (ValueError, KeyError, TypeError) as err:
            raise InvalidArgument(f"{source} is not usable DCAP collateral: {err}") from None
        return cls(
            json_text=text,
            dcap=dcap,
            key=CollateralKey(fmspc=fmspc, ca=ca, tee=tee),
            not_before=not_before,
            expires_at=min(ends),
            tcb_evaluation_data_number=evaluation,
        )

    def is_valid_at(self, now: int) -> bool:
        return self.not_before <= now <= self.expires_at

    def without_pck_chain(self) -> Collateral:
        """The same collateral minus a platform's own PCK chain (see the module docstring)."""
        data = json.loads(self.json_text)
        if data.pop(_PCK_CHAIN_FIELD, None) is None:
            return self
        return Collateral.from_json(json.dumps(data, indent=2))


def _pck_ca_kind(issuer: x509.Name) -> str:
    # Intel names its PCK CAs "Intel SGX PCK Processor CA" / "Intel SGX PCK Platform CA"
    # (PCS API v4, `ca=processor|platform`); the simulated PKI uses the same words.
    names = " ".join(str(a.value) for a in issuer.get_attributes_for_oid(x509.NameOID.COMMON_NAME))
    if "Processor" in names:
        return "processor"
    if "Platform" in names:
        return "platform"
    raise ValueError(f"PCK CRL issuer {names!r} is neither a Processor nor a Platform CA")


def load_collateral(path: str | os.PathLike[str]) -> Collateral:
    """Collateral from a JSON file in `QuoteCollateralV3` serde form."""
    path = Path(path)
    return Collateral.from_json(read_user_file(path, "collateral file"), source=f"{path}")


def collateral_expiry(collateral: Collateral) -> int:
    """The last unix second at which `collateral` still verifies (see the module docstring)."""
    return collateral.expires_at


def quote_collateral_key(quote: bytes) -> CollateralKey:
    """The cache key of the collateral `quote` needs, read from the quote's PCK certificate."""
    try:
        parsed = dcap_qvl.parse_quote(quote)
        return CollateralKey(
            fmspc=parsed.fmspc().upper(), ca=parsed.ca(), tee="tdx" if parsed.is_tdx() else "sgx"
        )
    except ValueError as err:
        raise AttestationFailed(
            f"quote verification failed: {one_line(err)}", reason=one_line(err)
        ) from None


#: SHA-256 of the DER of Intel's SGX Provisioning Certification Root CA (also in verify.py).
INTEL_ROOT_CA_SHA256 = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"


def check_pck_chain(quote: bytes, trusted_root_sha256: frozenset[str]) -> None:
    """Refuse (AttestationFailed) a quote whose embedded PCK chain (leaf → PCK CA → root) is
    not signed link by link up to a root whose DER hashes to one of `trusted_root_sha256`.
    A cheap pre-check before any network fetch; dcap-qvl verifies everything again."""
    try:
        pem = dcap_qvl.parse_quote(quote).cert_chain_pem_bytes()
        chain = x509.load_pem_x509_certificates(bytes(pem))
        if len(chain) < 2:
            raise ValueError("the quote carries no PCK certificate chain")
        for cert, issuer in zip(chain, chain[1:], strict=False):
            cert.verify_directly_issued_by(issuer)
        root = chain[-1]
        root.verify_directly_issued_by(root)
        if hashlib.sha256(root.public_bytes(Encoding.DER)).hexdigest() not in trusted_root_sha256:
            raise ValueError("the quote's PCK chain does not end at a trusted root")
    except (ValueError, TypeError, InvalidSignature) as err:
        reason = one_line(err) or "the quote's PCK certificate chain does not verify"
        raise AttestationFailed(f"quote verification failed: {reason}", reason=reason) from None


#: Fetches collateral for a raw quote from a PCCS / PCS base URL. dcap-qvl's
#: `get_collateral(url, quote)` has this shape; tests inject a fake.
Fetcher = Callable[[str, bytes], Awaitable["dcap_qvl.QuoteCollateralV3 | str | Collateral"]]


async def _dcap_fetch(url: str, quote: bytes) -> dcap_qvl.QuoteCollateralV3:
    return await dcap_qvl.get_collateral(url, quote)


class CollateralCache:
    """Collateral for quotes, fetched once per (FMSPC, PCK CA, TEE) and reused until it
    expires.

    - `pccs_url`: a PCCS (`https://pccs.example:8081`) or Intel PCS
      (`dcap_qvl.INTEL_PCS_URL`) base URL. Required unless `offline`.
    - `directory`: optional; fetched collateral is also written there as
      `<tee>-<ca>-<FMSPC>.json` (atomically) and read back after a restart.
    - `offline=True`: never fetch; collateral comes only from `directory` (files an operator
      copied there, same names). A missing or expired file is an error.
    - `refresh_margin_seconds`: refetch this long before expiry, so a verifier never holds
      collateral that expires during a handshake.
    - `clock`: unix seconds; injectable for tests. `fetch`: injectable fetcher (defaults to
      `dcap_qvl.get_collateral`).
    - `trusted_root_sha256`: roots a quote's PCK chain must end at before anything is
      fetched for it (default: Intel's). `failure_ttl_seconds`: how long a failed fetch is
      remembered (and answered from memory) per platform family.
    """

    def __init__(
        self,
        pccs_url: str | None = None,
        *,
        directory: str | os.PathLike[str] | None = None,
        offline: bool = False,
        refresh_margin_seconds: int = 3600,
        clock: Callable[[], float] = time.time,
        fetch: Fetcher | None = None,
        trusted_root_sha256: frozenset[str] = frozenset({INTEL_ROOT_CA_SHA256}),
        failure_ttl_seconds: int = 30,
    ) -> None:
        if not offline and not pccs_url:
            raise InvalidArgument("collateral cache needs a PCCS / PCS URL unless it is offline")
        if offline and directory is None:
            raise InvalidArgument("an offline collateral cache needs a directory to read from")
        if refresh_margin_seconds < 0:
            raise InvalidArgument("refresh_margin_seconds must not be negative")
        self._url = pccs_url or ""
        self._directory = Path(directory) if directory is not None else None
        self._offline = offline
        self._margin = refresh_margin_seconds
        self._clock = clock
        self._fetch: Fetcher = fetch or _dcap_fetch
        self._entries: dict[CollateralKey, Collateral] = {}
        self._locks: dict[CollateralKey, asyncio.Lock] = {}
        self._roots = trusted_root_sha256
        self._failure_ttl = failure_ttl_seconds
        #: key → (until, message) of the last failed fetch
        self._failures: dict[CollateralKey, tuple[int, str]] = {}
        #: how many fetches were attempted (tests and metrics read it)
        self.fetches = 0

    def _now(self) -> int:
        return int(self._clock())

    def _fresh(self, collateral: Collateral | None, now: int) -> bool:
        if collateral is None:
            return False
        if self._offline:  # no refetch possible: use it to its last valid second
            return collateral.is_valid_at(now)
        return collateral.not_before <= now <= collateral.expires_at - self._margin

    async def get(self, quote: bytes) -> Collateral:
        """Collateral to verify `quote` now: cached, read from the directory, or fetched."""
        return await self.get_for(quote_collateral_key(quote), quote)

    async def get_for(self, key: CollateralKey, quote: bytes | None = None) -> Collateral:
        now = self._now()
        cached = self._entries.get(key)
        if self._fresh(cached, now):
            assert cached is not None
            return cached
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            now = self._now()
            cached = self._entries.get(key)
            if self._fresh(cached, now):
                assert cached is not None
                return cached
            stored = self._read_stored(key)
            if self._fresh(stored, now):
                assert stored is not None
                self._entries[key] = stored
                return stored
            if self._offline:
                where = self._directory / key.file_name()  # type: ignore[operator]
                state = "has expired" if stored is not None else "is missing"
                raise FailedPrecondition(
                    f"offline collateral {where} {state}; copy fresh collateral for FMSPC "
                    f"{key.fmspc} ({key.tee}, {key.ca} CA) there"
                )
            if quote is None:
                raise InvalidArgument(f"no cached collateral for {key} and no quote to fetch it")
            failed = self._failures.get(key)
            if failed is not None and now < failed[0]:
                raise AttestationUnavailable(f"{failed[1]} (not retried before {failed[0]})")
            check_pck_chain(quote, self._roots)
            try:
                fetched = await self._fetch_checked(key, quote, now)
            except (AttestationUnavailable, InvalidArgument) as err:
                self._failures[key] = (now + self._failure_ttl, err.message)
                if len(self._failures) > 1024:  # bounded: forget the oldest
                    self._failures.pop(next(iter(self._failures)))
                raise
            self._failures.pop(key, None)
            self._entries[key] = fetched
            self._store(key, fetched)
            return fetched

    async def _fetch_checked(self, key: CollateralKey, quote: bytes, now: int) -> Collateral:
        self.fetches += 1
        try:
            answer = await self._fetch(self._url, quote)
        except (ValueError, RuntimeError, OSError) as err:
            raise AttestationUnavailable(
                f"cannot fetch collateral from {self._url}: {one_line(err)}"
            ) from None
        source = f"collateral from {self._url}"
        if isinstance(answer, Collateral):
            collateral = answer
        elif isinstance(answer, str):
            collateral = Collateral.from_json(answer, source=source)
        else:
            collateral = Collateral.from_dcap(answer, source=source)
        collateral = collateral.without_pck_chain()
        if collateral.key != key:
            raise AttestationUnavailable(f"{source} is for {collateral.key}, not the quote's {key}")
        if not collateral.is_valid_at(now):
            raise AttestationUnavailable(
                f"{source} is not valid now (valid {collateral.not_before}.."
                f"{collateral.expires_at}, now {now}): check the PCCS cache and the clock"
            )
        log.info(
            "fetched collateral for FMSPC %s (%s, %s CA), valid until %d",
            key.fmspc,
            key.tee,
            key.ca,
            collateral.expires_at,
        )
        return collateral

    def _read_stored(self, key: CollateralKey) -> Collateral | None:
        if self._directory is None:
            return None
        path = self._directory / key.file_name()
        if not path.is_file():
            return None
        try:
            collateral = load_collateral(path)
        except InvalidArgument as err:
            log.warning("ignoring unusable cached collateral: %s", err)
            return None
        if collateral.key != key:
            log.warning("ignoring %s: it holds collateral for %s", path, collateral.key)
            return None
        return collateral

    def _store(self, key: CollateralKey, collateral: Collateral) -> None:
        if self._directory is None:
            return
        self._directory.mkdir(parents=True, exist_ok=True)
        with atomic_output_file(self._directory / key.file_name(), replace=True) as out:
            out.write(collateral.json_text.encode())

    def put(self, collateral: Collateral) -> None:
        """Add collateral obtained elsewhere (an operator's file, a test)."""
        self._entries[collateral.key] = collateral.without_pck_chain()
