"""Collateral sources: files per platform family, and the PCCS cache from worker threads."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from pathlib import Path

import pytest

from sealserve.attestation import AttestationFailed, CollateralCache, load_collateral
from sealserve.attestation.sim import SimAttester, SimTee
from sealserve.errors import InvalidArgument
from sealserve.kbs.collateral import CachedCollateral, CollateralFiles
from tests.kbs.conftest import SIM_NOW
from tests.testvectors import TESTVECTORS

SGX_COLLATERAL = TESTVECTORS / "dcap" / "sgx_quote_collateral.json"
TDX_COLLATERAL = TESTVECTORS / "dcap" / "tdx_quote_collateral.json"


def test_files_are_picked_per_platform_family(sim: SimTee, attester: SimAttester) -> None:
    files = CollateralFiles([sim.collateral, load_collateral(SGX_COLLATERAL)])
    assert files(attester.evidence(bytes(64)).quote) is sim.collateral
    real = (TESTVECTORS / "dcap" / "sgx_quote").read_bytes()
    assert files(real).key.fmspc == "00A067110000"
    only_tdx = CollateralFiles([load_collateral(TDX_COLLATERAL), sim.collateral])
    with pytest.raises(AttestationFailed, match="no collateral for FMSPC 00A067110000"):
        only_tdx(real)


def test_files_refuse_duplicates_and_nothing(sim: SimTee) -> None:
    with pytest.raises(InvalidArgument, match="same platform family"):
        CollateralFiles([sim.collateral, sim.collateral])
    with pytest.raises(InvalidArgument, match="no collateral"):
        CollateralFiles([])


def test_cached_collateral_fetches_once_on_the_loop(
    tmp_path: Path, sim: SimTee, attester: SimAttester
) -> None:
    fetches: list[str] = []

    async def fetch(url: str, quote: bytes):  # type: ignore[no-untyped-def]
        fetches.append(url)
        return sim.collateral

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        cache = CollateralCache(
            "https://pccs.invalid:8081",
            directory=tmp_path,
            clock=lambda: SIM_NOW + 60,
            fetch=fetch,
            trusted_root_sha256=frozenset({hashlib.sha256(sim.root_ca_der).hexdigest()}),
        )
        source = CachedCollateral(cache, loop)
        quote = attester.evidence(bytes(64)).quote
        assert source(quote).key == sim.collateral.key
        assert source(quote).key == sim.collateral.key
        assert fetches == ["https://pccs.invalid:8081"]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
