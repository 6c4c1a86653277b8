"""Attesters: the ways a server obtains a quote binding its `report_data`.

- `GramineAttester` — inside a Gramine SGX enclave: write the 64 bytes to
  `/dev/attestation/user_report_data`, read `/dev/attestation/quote` (Gramine's
  "attestation pseudo-files"; the manifest needs `sgx.remote_attestation = "dcap"`).
- `TsmAttester` — a Linux ≥ 6.7 confidential VM through configfs-tsm
  (Documentation/ABI/testing/configfs-tsm-report): `mkdir
  /sys/kernel/config/tsm/report/<name>`, write `inblob`, read `outblob`, with `provider`
  telling the TEE ("tdx_guest", "sev_guest") and `generation` detecting concurrent writers.
  Only TDX quotes are produced: SEV-SNP reports are not DCAP quotes, and nothing here can
  verify them yet, so a SEV-SNP guest gets a clear UNIMPLEMENTED error instead of evidence no
  KBS would accept.
- `CocoAttester` — inside a Confidential Containers pod: the guest's Attestation Agent
  (confidential-containers/guest-components) through its REST endpoint (api-server-rest,
  `http://127.0.0.1:8006`, openapi/api.json): `GET /aa/evidence?runtime_data=<base64url, no
  padding>&encoding=base64`. The AA hands the 64 bytes to its TDX attester as report data and
  answers with the attester's evidence, for TDX the JSON `{"cc_eventlog": ..., "quote":
  <base64>}`. Only loopback URLs: the endpoint refuses others, and evidence requests must
  never leave the pod. The AA needs no KBS settings for this (the init-data's aa.toml may be
  absent).
- `SimAttester` — the simulated TEE (`attestation.sim`), quoting for the measurement of the
  installed code and launch configuration.

Paths are injectable so tests can use fake trees. Thread safety: Gramine's pseudo-files are
process-wide state (write, then read), so `GramineAttester` serialises its calls with a lock;
each `TsmAttester` call uses its own configfs entry and is safe from any thread; each
`CocoAttester` call is one HTTP request of its own, safe from any thread.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import ipaddress
import json
import os
import secrets
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from sealserve.attestation.errors import AttestationUnavailable, AttestationUnsupported
from sealserve.attestation.evidence import Attester, Evidence, check_report_data
from sealserve.attestation.sim import SimAttester
from sealserve.errors import FailedPrecondition

__all__ = [
    "Attester",
    "CocoAttester",
    "Evidence",
    "GramineAttester",
    "SimAttester",
    "TsmAttester",
]

GRAMINE_ATTESTATION_DIR = Path("/dev/attestation")
TSM_REPORT_ROOT = Path("/sys/kernel/config/tsm/report")
COCO_ATTESTATION_AGENT_URL = "http://127.0.0.1:8006"
#: a TDX quote with its certification data is a few KiB; the CC event log can be larger
_MAX_EVIDENCE_BYTES = 4 << 20

_gramine_lock = threading.Lock()


class GramineAttester:
    """SGX quotes from Gramine's `/dev/attestation` pseudo-files."""

    tee = "sgx"

    def __init__(self, attestation_dir: str | os.PathLike[str] = GRAMINE_ATTESTATION_DIR):
        self.attestation_dir = Path(attestation_dir)

    def evidence(self, report_data: bytes) -> Evidence:
        report_data = check_report_data(report_data)
        directory = self.attestation_dir
        if not (directory / "quote").exists():
            raise FailedPrecondition(
                f"not running inside a Gramine SGX enclave with remote attestation: "
                f"{directory / 'quote'} does not exist"
            )
        kind_file = directory / "attestation_type"
        if kind_file.exists():
            kind = kind_file.read_text().strip()
            if kind == "epid":
                raise AttestationUnsupported(
                    "Gramine is configured for EPID attestation, which DCAP verification "
                    'cannot check: set sgx.remote_attestation = "dcap" in the manifest'
                )
            if kind != "dcap":
                raise FailedPrecondition(
                    f"Gramine's attestation type is {kind!r}: set "
                    'sgx.remote_attestation = "dcap" in the manifest'
                )
        try:
            with _gramine_lock:
                with open(directory / "user_report_data", "wb") as f:
                    f.write(report_data)
                quote = (directory / "quote").read_bytes()
        except OSError as err:
            raise AttestationUnavailable(f"Gramine could not produce a quote: {err}") from None
        if not quote:
            raise AttestationUnavailable("Gramine returned an empty quote")
        return Evidence(tee=self.tee, quote=quote)


class TsmAttester:
    """TDX quotes through Linux configfs-tsm (`/sys/kernel/config/tsm/report`).

    The three file operations the kernel gives meaning to are injectable for tests: `mkdir`
    (the kernel populates the entry: `provider`, `inblob`, `outblob`, `generation`), `write`
    (writing `inblob` bumps `generation`) and `rmdir`.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] = TSM_REPORT_ROOT,
        *,
        mkdir: Callable[[Path], None] = os.mkdir,
        write: Callable[[Path, bytes], object] = Path.write_bytes,
        rmdir: Callable[[Path], None] = os.rmdir,
    ) -> None:
        self.root = Path(root)
        self._mkdir = mkdir
        self._write = write
        self._rmdir = rmdir

    tee = "tdx"  # the only provider it quotes for (see `_quote`)

    def evidence(self, report_data: bytes) -> Evidence:
        report_data = check_report_data(report_data)
        if not self.root.is_dir():
            raise FailedPrecondition(
                f"configfs-tsm is not available ({self.root} does not exist): run in a TDX "
                "guest on Linux 6.7 or later with configfs mounted"
            )
        entry = self.root / f"sealserve-{os.getpid()}-{secrets.token_hex(6)}"
        try:
            self._mkdir(entry)
        except OSError as err:
            raise AttestationUnavailable(
                f"cannot create configfs-tsm report {entry}: {err}"
            ) from None
        try:
            return self._quote(entry, report_data)
        except OSError as err:
            raise AttestationUnavailable(f"configfs-tsm report {entry} failed: {err}") from None
        finally:
            with contextlib.suppress(OSError):
                self._rmdir(entry)

    def _quote(self, entry: Path, report_data: bytes) -> Evidence:
        provider = (entry / "provider").read_text().strip()
        if provider == "sev_guest":
            raise AttestationUnsupported(
                "this is an AMD SEV-SNP guest (configfs-tsm provider sev_guest): sealserve "
                "verifies Intel SGX and TDX quotes only, so SEV-SNP attestation is not supported"
            )
        if provider != "tdx_guest":
            raise AttestationUnsupported(f"unknown configfs-tsm provider {provider!r}")
        generation_file = entry / "generation"
        before = _read_int(generation_file)
        self._write(entry / "inblob", report_data)
        quote = (entry / "outblob").read_bytes()
        after = _read_int(generation_file)
        # configfs-tsm ABI: `generation` counts writes; one write of ours means +1. Anything
        # else means another writer raced us, and the outblob may not carry our report data.
        if before is not None and after is not None and after != before + 1:
            raise AttestationUnavailable(
                f"configfs-tsm report {entry.name} was written concurrently; retry"
            )
        if not quote:
            raise AttestationUnavailable("configfs-tsm returned an empty quote")
        return Evidence(tee="tdx", quote=quote)


class CocoAttester:
    """TDX quotes from the Confidential Containers Attestation Agent's REST endpoint."""

    tee = "tdx"

    def __init__(self, url: str = COCO_ATTESTATION_AGENT_URL, *, timeout: float = 60.0) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname or not _is_loopback(parts.hostname):
            raise FailedPrecondition(
                f"the Attestation Agent's REST endpoint must be on the pod's loopback "
                f"(http://127.0.0.1:8006), not {url!r}"
            )
        self.url = url.rstrip("/")
        self.timeout = timeout
        # no proxy from the environment: the request goes to the pod's own loopback only
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def evidence(self, report_data: bytes) -> Evidence:
        report_data = check_report_data(report_data)
        query = urllib.parse.urlencode(
            {
                "runtime_data": base64.urlsafe_b64encode(report_data).rstrip(b"=").decode(),
                "encoding": "base64",
            }
        )
        where = f"{self.url}/aa/evidence"
        try:
            with self._opener.open(f"{where}?{query}", timeout=self.timeout) as answer:
                body = answer.read(_MAX_EVIDENCE_BYTES + 1)
        except urllib.error.HTTPError as err:
            detail = err.read(500).decode("utf-8", "replace").strip()
            raise AttestationUnavailable(
                f"the Attestation Agent at {where} answered HTTP {err.code}"
                + (f": {detail}" if detail else "")
            ) from None
        except (OSError, ValueError) as err:
            raise AttestationUnavailable(
                f"cannot reach the Attestation Agent at {where} (is this a Confidential "
                f"Containers pod with api-server-rest?): {err}"
            ) from None
        if len(body) > _MAX_EVIDENCE_BYTES:
            raise AttestationUnavailable("the Attestation Agent's evidence is over 4 MiB")
        return Evidence(tee=self.tee, quote=_tdx_quote_from(body))


def _tdx_quote_from(body: bytes) -> bytes:
    """The quote of the AA's TDX evidence (`{"cc_eventlog": ..., "quote": <base64>}`)."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        document = None
    quote = document.get("quote") if isinstance(document, dict) else None
    if not isinstance(quote, str):
        keys = sorted(document) if isinstance(document, dict) else type(document).__name__
        raise AttestationUnsupported(
            f"the Attestation Agent's evidence is not TDX evidence (no quote; {keys}): "
            "sealserve verifies Intel TDX and SGX quotes only"
        )
    padded = quote + "=" * (-len(quote) % 4)
    try:  # the AA writes standard base64; URL-safe is accepted too
        try:
            decoded = base64.b64decode(padded, validate=True)
        except binascii.Error:
            decoded = base64.b64decode(padded, altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise AttestationUnavailable("the Attestation Agent's quote is not base64") from None
    if not decoded:
        raise AttestationUnavailable("the Attestation Agent returned an empty quote")
    return decoded


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read_int(path: Path) -> int | None:
    if not path.exists():
        return None
    return int(path.read_text().strip() or "0")
