"""Collateral: loading, its validity window, and the cache (a fake fetcher and an injected
clock stand in for the network and time)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import dcap_qvl
import pytest

from sealserve.attestation import (
    AttestationUnavailable,
    Collateral,
    CollateralCache,
    CollateralKey,
    load_collateral,
    verify_quote,
)
from sealserve.attestation.errors import AttestationFailed
from sealserve.errors import Code, FailedPrecondition, InvalidArgument, NotFound
from tests.attestation.common import DCAP

SGX_QUOTE = (DCAP / "sgx_quote").read_bytes()
SGX_COLLATERAL = (DCAP / "sgx_quote_collateral.json").read_text()
SGX_KEY = CollateralKey(fmspc="00A067110000", ca="processor", tee="sgx")
SGX_START, SGX_END = 1750330571, 1752919278
TD15EX_QUOTE = (DCAP / "tdx_quote_td15ex").read_bytes()
TD15EX_COLLATERAL = (DCAP / "tdx_quote_td15ex_collateral.json").read_text()


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> float:
        return float(self.now)


class FakePccs:
    """Answers like `dcap_qvl.get_collateral(url, quote)`, counting calls."""

    def __init__(self, answer: object) -> None:
        self.answer = answer
        self.calls: list[tuple[str, bytes]] = []

    async def __call__(self, url: str, quote: bytes) -> object:
        self.calls.append((url, quote))
        await asyncio.sleep(0)
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


def run(coroutine):  # type: ignore[no-untyped-def]
    return asyncio.run(coroutine)


def test_load_collateral_describes_it() -> None:
    collateral = load_collateral(DCAP / "sgx_quote_collateral.json")
    assert collateral.key == SGX_KEY
    assert (collateral.not_before, collateral.expires_at) == (SGX_START, SGX_END)
    assert collateral.tcb_evaluation_data_number == 17
    assert collateral.is_valid_at(SGX_END) and not collateral.is_valid_at(SGX_END + 1)
    assert "BEGIN CERTIFICATE" not in repr(collateral)  # the bulky parts stay out of repr


def test_platform_ca_and_tdx_key() -> None:
    collateral = load_collateral(DCAP / "tdx_quote_collateral.json")
    assert collateral.key == CollateralKey(fmspc="B0C06F000000", ca="platform", tee="tdx")


@pytest.mark.parametrize(
    ("content", "error", "fragment"),
    [
        ("{", InvalidArgument, "is not DCAP collateral"),
        ("{}", InvalidArgument, "missing field"),
        (b"\xff\xfe", InvalidArgument, "UTF-8"),
    ],
)
def test_bad_collateral_files(tmp_path: Path, content: str | bytes, error: type, fragment: str):
    path = tmp_path / "c.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(error) as failure:
        load_collateral(path)
    assert fragment in str(failure.value) and str(path) in str(failure.value)


def test_missing_collateral_file(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        load_collateral(tmp_path / "nope.json")


def test_dropping_the_pck_chain_keeps_it_verifying() -> None:
    collateral = Collateral.from_json(TD15EX_COLLATERAL)
    assert "pck_certificate_chain" in json.loads(collateral.json_text)
    bare = collateral.without_pck_chain()
    assert "pck_certificate_chain" not in json.loads(bare.json_text)
    assert bare.key == collateral.key
    verify_quote(TD15EX_QUOTE, bare, now=1794008710)  # the quote embeds its own chain


def test_cache_fetches_once_until_expiry() -> None:
    clock = Clock(SGX_START + 10)
    pccs = FakePccs(dcap_qvl.QuoteCollateralV3.from_json(SGX_COLLATERAL))
    cache = CollateralCache(
        "https://pccs.test", fetch=pccs, clock=clock, refresh_margin_seconds=3600
    )

    async def scenario() -> None:
        first = await cache.get(SGX_QUOTE)
        assert first.key == SGX_KEY
        assert pccs.calls == [("https://pccs.test", SGX_QUOTE)]
        clock.now = SGX_END - 3600  # last second before the refresh margin
        assert await cache.get(SGX_QUOTE) is first
        assert len(pccs.calls) == 1
        clock.now = SGX_END - 3599  # inside the refresh margin: fetch again (this PCCS
        again = await cache.get(SGX_QUOTE)  # still has the same, still valid, collateral)
        assert again.key == SGX_KEY and len(pccs.calls) == 2

    run(scenario())


def test_cache_refuses_expired_collateral_from_the_pccs() -> None:
    clock = Clock(SGX_END + 1)
    cache = CollateralCache("https://pccs.test", fetch=FakePccs(SGX_COLLATERAL), clock=clock)
    with pytest.raises(AttestationUnavailable, match="not valid now") as failure:
        run(cache.get(SGX_QUOTE))
    assert failure.value.code is Code.UNAVAILABLE


def test_cache_fetch_failure_is_unavailable() -> None:
    cache = CollateralCache(
        "https://pccs.test",
        fetch=FakePccs(ValueError("Failed to fetch: 503\n\nCaused by:\n    busy")),
        clock=Clock(SGX_START),
    )
    with pytest.raises(AttestationUnavailable) as failure:
        run(cache.get(SGX_QUOTE))
    assert str(failure.value) == (
        "cannot fetch collateral from https://pccs.test: Failed to fetch: 503; busy"
    )


def test_cache_refuses_collateral_for_another_platform() -> None:
    other = (DCAP / "tdx_quote_collateral.json").read_text()
    cache = CollateralCache("https://pccs.test", fetch=FakePccs(other), clock=Clock(SGX_START))
    with pytest.raises(AttestationUnavailable, match="not the quote's"):
        run(cache.get(SGX_QUOTE))


def test_cache_drops_the_platform_pck_chain() -> None:
    pccs = FakePccs(TD15EX_COLLATERAL)
    cache = CollateralCache("https://pccs.test", fetch=pccs, clock=Clock(1794008000))
    cached = run(cache.get(TD15EX_QUOTE))
    assert "pck_certificate_chain" not in json.loads(cached.json_text)


def test_concurrent_gets_fetch_once() -> None:
    pccs = FakePccs(SGX_COLLATERAL)
    cache = CollateralCache("https://pccs.test", fetch=pccs, clock=Clock(SGX_START))

    async def scenario() -> list[Collateral]:
        return await asyncio.gather(*(cache.get(SGX_QUOTE) for _ in range(5)))

    results = run(scenario())
    assert len(pccs.calls) == 1 and all(r is results[0] for r in results)


def test_directory_survives_a_restart(tmp_path: Path) -> None:
    clock = Clock(SGX_START)
    pccs = FakePccs(SGX_COLLATERAL)
    run(CollateralCache("u", directory=tmp_path, fetch=pccs, clock=clock).get(SGX_QUOTE))
    stored = tmp_path / "sgx-processor-00A067110000.json"
    assert stored.is_file()
    restarted = CollateralCache("u", directory=tmp_path, fetch=pccs, clock=clock)
    assert run(restarted.get(SGX_QUOTE)).key == SGX_KEY
    assert len(pccs.calls) == 1


def test_unusable_stored_file_is_refetched(tmp_path: Path) -> None:
    (tmp_path / "sgx-processor-00A067110000.json").write_text("{not json")
    pccs = FakePccs(SGX_COLLATERAL)
    cache = CollateralCache("u", directory=tmp_path, fetch=pccs, clock=Clock(SGX_START))
    run(cache.get(SGX_QUOTE))
    assert len(pccs.calls) == 1
    assert load_collateral(tmp_path / "sgx-processor-00A067110000.json").key == SGX_KEY


def test_offline_reads_files_and_never_fetches(tmp_path: Path) -> None:
    (tmp_path / "sgx-processor-00A067110000.json").write_text(SGX_COLLATERAL)
    pccs = FakePccs(RuntimeError("no network"))
    clock = Clock(SGX_END)  # offline: usable to its very last second
    cache = CollateralCache(directory=tmp_path, offline=True, fetch=pccs, clock=clock)
    collateral = run(cache.get(SGX_QUOTE))
    verify_quote(SGX_QUOTE, collateral, now=SGX_END)
    assert pccs.calls == []
    clock.now = SGX_END + 1
    fresh = CollateralCache(directory=tmp_path, offline=True, fetch=pccs, clock=clock)
    with pytest.raises(FailedPrecondition, match="has expired"):
        run(fresh.get(SGX_QUOTE))


def test_offline_without_the_file(tmp_path: Path) -> None:
    cache = CollateralCache(directory=tmp_path, offline=True, clock=Clock(SGX_START))
    with pytest.raises(FailedPrecondition, match="sgx-processor-00A067110000.json is missing"):
        run(cache.get(SGX_QUOTE))


def test_put_serves_without_fetching() -> None:
    cache = CollateralCache("u", fetch=FakePccs(RuntimeError("no")), clock=Clock(SGX_START))
    cache.put(Collateral.from_json(SGX_COLLATERAL))
    assert run(cache.get(SGX_QUOTE)).key == SGX_KEY


def test_cache_with_a_malformed_quote() -> None:
    cache = CollateralCache("u", fetch=FakePccs(SGX_COLLATERAL), clock=Clock(SGX_START))
    with pytest.raises(AttestationFailed):
        run(cache.get(b"not a quote"))


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"offline": True}, {"pccs_url": "u", "refresh_margin_seconds": -1}],
    ids=["no url", "offline without directory", "negative margin"],
)
def test_cache_configuration_errors(kwargs: dict) -> None:
    with pytest.raises(InvalidArgument):
        CollateralCache(**kwargs)


def test_failed_fetches_are_remembered_briefly() -> None:
    """20 attests while the PCCS is down cost one fetch, not 20; after the failure window the
    next quote tries again."""
    clock = Clock(SGX_START + 10)
    pccs = FakePccs(OSError("connection refused"))
    cache = CollateralCache("https://pccs.test", fetch=pccs, clock=clock, failure_ttl_seconds=30)

    async def scenario() -> None:
        for _ in range(20):
            with pytest.raises(AttestationUnavailable, match="connection refused"):
                await cache.get(SGX_QUOTE)
        assert len(pccs.calls) == 1
        clock.now += 31
        pccs.answer = dcap_qvl.QuoteCollateralV3.from_json(SGX_COLLATERAL)
        assert (await cache.get(SGX_QUOTE)).key == SGX_KEY
        assert len(pccs.calls) == 2

    run(scenario())


def test_quote_whose_pck_chain_does_not_verify_fetches_nothing() -> None:
    """The PCK chain embedded in a quote is checked against the trusted root before any
    fetch: a quote with a forged chain, or a chain to another root, costs no PCCS call."""
    pem_start = SGX_QUOTE.index(b"-----BEGIN CERTIFICATE-----")
    forged = bytearray(SGX_QUOTE)
    body = forged.index(b"\n", pem_start) + 200  # inside the leaf certificate's base64
    forged[body] = ord("A") if forged[body] != ord("A") else ord("B")
    pccs = FakePccs(dcap_qvl.QuoteCollateralV3.from_json(SGX_COLLATERAL))
    cache = CollateralCache("https://pccs.test", fetch=pccs, clock=Clock(SGX_START + 10))
    other_root = CollateralCache(
        "https://pccs.test",
        fetch=pccs,
        clock=Clock(SGX_START + 10),
        trusted_root_sha256=frozenset({"00" * 32}),
    )

    async def scenario() -> None:
        for _ in range(20):
            with pytest.raises(AttestationFailed):
                await cache.get(bytes(forged))
            with pytest.raises(AttestationFailed, match="trusted root"):
                await other_root.get(SGX_QUOTE)
        assert pccs.calls == []
        assert (await cache.get(SGX_QUOTE)).key == SGX_KEY  # the genuine chain passes

    run(scenario())
