"""Attesters against fake Gramine and configfs-tsm trees (no TEE on a test machine)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sealserve.attestation import (
    AttestationUnavailable,
    AttestationUnsupported,
    Attester,
    GramineAttester,
    SimAttester,
    TsmAttester,
)
from sealserve.errors import Code, FailedPrecondition, InvalidArgument
from tests.attestation.common import DCAP

REPORT_DATA = bytes(range(64))
TDX_QUOTE = (DCAP / "tdx_quote").read_bytes()
SGX_QUOTE = (DCAP / "sgx_quote").read_bytes()


def test_all_attesters_are_attesters(sim_dir: Path) -> None:
    attesters: list[Attester] = [
        GramineAttester(),
        TsmAttester(),
        SimAttester(sim_dir, mr_enclave=bytes(32)),
    ]
    assert [a.tee for a in attesters] == ["sgx", "tdx", "sim"]


# --- Gramine ------------------------------------------------------------------------------


def gramine_tree(root: Path, kind: str = "dcap") -> Path:
    root.mkdir()
    (root / "attestation_type").write_text(kind + "\n")
    (root / "user_report_data").write_bytes(bytes(64))
    (root / "quote").write_bytes(SGX_QUOTE)
    return root


def test_gramine_writes_report_data_and_reads_the_quote(tmp_path: Path) -> None:
    tree = gramine_tree(tmp_path / "attestation")
    evidence = GramineAttester(tree).evidence(REPORT_DATA)
    assert (evidence.tee, evidence.quote) == ("sgx", SGX_QUOTE)
    assert (tree / "user_report_data").read_bytes() == REPORT_DATA
    assert repr(evidence) == f"Evidence(tee='sgx', quote=<{len(SGX_QUOTE)} bytes>)"


def test_gramine_outside_an_enclave(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match="not running inside a Gramine SGX enclave"):
        GramineAttester(tmp_path / "missing").evidence(REPORT_DATA)


@pytest.mark.parametrize(
    ("kind", "error", "code"),
    [
        ("none", FailedPrecondition, Code.FAILED_PRECONDITION),
        ("epid", AttestationUnsupported, Code.UNIMPLEMENTED),
    ],
)
def test_gramine_without_dcap(tmp_path: Path, kind: str, error: type, code: Code) -> None:
    tree = gramine_tree(tmp_path / "attestation", kind)
    with pytest.raises(error, match="remote_attestation") as failure:
        GramineAttester(tree).evidence(REPORT_DATA)
    assert failure.value.code is code


def test_gramine_empty_quote(tmp_path: Path) -> None:
    tree = gramine_tree(tmp_path / "attestation")
    (tree / "quote").write_bytes(b"")
    with pytest.raises(AttestationUnavailable):
        GramineAttester(tree).evidence(REPORT_DATA)


def test_gramine_report_data_size(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="exactly 64 bytes"):
        GramineAttester(gramine_tree(tmp_path / "a")).evidence(bytes(32))


# --- configfs-tsm -------------------------------------------------------------------------


class FakeConfigfs:
    """The kernel's side: `mkdir` populates the entry, writing `inblob` bumps `generation`,
    `rmdir` (here) remembers what was written."""

    def __init__(self, provider: str, outblob: bytes = TDX_QUOTE, race: bool = False):
        self.provider = provider
        self.outblob = outblob
        self.race = race
        self.inblobs: list[bytes] = []
        self.removed: list[str] = []

    def mkdir(self, entry: Path) -> None:
        entry.mkdir()
        (entry / "provider").write_text(self.provider + "\n")
        (entry / "generation").write_text("0\n")
        (entry / "outblob").write_bytes(self.outblob)

    def rmdir(self, entry: Path) -> None:
        if (entry / "inblob").exists():
            self.inblobs.append((entry / "inblob").read_bytes())
        self.removed.append(entry.name)
        shutil.rmtree(entry)

    def write(self, path: Path, data: bytes) -> None:
        path.write_bytes(data)
        if path.name == "inblob":  # the kernel counts writes; a racing writer adds its own
            generation = path.parent / "generation"
            bump = 2 if self.race else 1
            generation.write_text(f"{int(generation.read_text()) + bump}\n")

    def attester(self, root: Path) -> TsmAttester:
        return TsmAttester(root, mkdir=self.mkdir, write=self.write, rmdir=self.rmdir)


def test_tsm_tdx_quote(tmp_path: Path) -> None:
    fake = FakeConfigfs("tdx_guest")
    evidence = fake.attester(tmp_path).evidence(REPORT_DATA)
    assert (evidence.tee, evidence.quote) == ("tdx", TDX_QUOTE)
    assert fake.inblobs == [REPORT_DATA]
    assert len(fake.removed) == 1 and fake.removed[0].startswith("sealserve-")
    assert list(tmp_path.iterdir()) == []  # the report entry is removed


def test_tsm_sev_snp_is_unimplemented(tmp_path: Path) -> None:
    fake = FakeConfigfs("sev_guest")
    with pytest.raises(AttestationUnsupported, match="SEV-SNP") as failure:
        fake.attester(tmp_path).evidence(REPORT_DATA)
    assert failure.value.code is Code.UNIMPLEMENTED
    assert fake.inblobs == []  # nothing was asked of the kernel
    assert list(tmp_path.iterdir()) == []


def test_tsm_unknown_provider(tmp_path: Path) -> None:
    with pytest.raises(AttestationUnsupported, match="unknown configfs-tsm provider"):
        FakeConfigfs("cca_guest").attester(tmp_path).evidence(REPORT_DATA)


def test_tsm_concurrent_writer_is_detected(tmp_path: Path) -> None:
    with pytest.raises(AttestationUnavailable, match="concurrently"):
        FakeConfigfs("tdx_guest", race=True).attester(tmp_path).evidence(REPORT_DATA)
    assert list(tmp_path.iterdir()) == []


def test_tsm_empty_outblob(tmp_path: Path) -> None:
    with pytest.raises(AttestationUnavailable, match="empty quote"):
        FakeConfigfs("tdx_guest", outblob=b"").attester(tmp_path).evidence(REPORT_DATA)


def test_tsm_without_configfs(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match="configfs-tsm is not available"):
        TsmAttester(tmp_path / "missing").evidence(REPORT_DATA)


def test_tsm_mkdir_failure(tmp_path: Path) -> None:
    def refuse(entry: Path) -> None:
        raise PermissionError(13, "Permission denied")

    with pytest.raises(AttestationUnavailable, match="cannot create configfs-tsm report"):
        TsmAttester(tmp_path, mkdir=refuse).evidence(REPORT_DATA)


def test_tsm_report_data_size(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        TsmAttester(tmp_path).evidence(b"short")
