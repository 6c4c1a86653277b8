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
- `SimAttester` — the simulated TEE (`attestation.sim`), quoting for the measurement of the
  installed code and launch configuration.

Paths are injectable so tests can use fake trees. Thread safety: Gramine's pseudo-files are
process-wide state (write, then read), so `GramineAttester` serialises its calls with a lock;
each `TsmAttester` call uses its own configfs entry and is safe from any thread.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
from collections.abc import Callable
from pathlib import Path

from sealserve.attestation.errors import AttestationUnavailable, AttestationUnsupported
from sealserve.attestation.evidence import Attester, Evidence, check_report_data
from sealserve.attestation.sim import SimAttester
from sealserve.errors import FailedPrecondition

__all__ = ["Attester", "Evidence", "GramineAttester", "SimAttester", "TsmAttester"]

GRAMINE_ATTESTATION_DIR = Path("/dev/attestation")
TSM_REPORT_ROOT = Path("/sys/kernel/config/tsm/report")

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


def _read_int(path: Path) -> int | None:
    if not path.exists():
        return None
    return int(path.read_text().strip() or "0")
