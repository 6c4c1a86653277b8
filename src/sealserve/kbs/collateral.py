"""Where the KBS gets DCAP collateral for a quote: files, or a PCCS through the cache.

A collateral source is a callable `quote -> Collateral` (`service.CollateralSource`), called
from the worker threads the HTTP adapter runs verification in.

- `CollateralFiles`: collateral files an operator supplies (offline sites, the simulated TEE),
  picked per quote by (FMSPC, PCK CA, TEE) — the unit Intel's PCS serves collateral in.
- `CachedCollateral`: `attestation.CollateralCache` (PCCS / Intel PCS, cached until it
  expires). The cache belongs to one asyncio loop; the source hands each request to that loop
  with `run_coroutine_threadsafe` and waits, so it must not be called *on* that loop.

Whether collateral is still valid is not judged here: dcap-qvl checks every date at `now`, so
expired collateral fails verification with its own reason (audited).

Thread-safe.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from sealserve.attestation import AttestationFailed, Collateral, CollateralCache, CollateralKey
from sealserve.attestation.collateral import quote_collateral_key
from sealserve.errors import InvalidArgument

FETCH_TIMEOUT_SECONDS = 60.0


class CollateralFiles:
    """Fixed collateral, one per platform family."""

    def __init__(self, collaterals: Iterable[Collateral]) -> None:
        self._by_key: dict[CollateralKey, Collateral] = {}
        for collateral in collaterals:
            if collateral.key in self._by_key:
                raise InvalidArgument(
                    f"two collateral files for the same platform family {collateral.key}"
                )
            self._by_key[collateral.key] = collateral
        if not self._by_key:
            raise InvalidArgument("no collateral given")

    def __call__(self, quote: bytes) -> Collateral:
        if len(self._by_key) == 1:
            # One family: let dcap-qvl say precisely what does not match, if anything.
            return next(iter(self._by_key.values()))
        key = quote_collateral_key(quote)
        try:
            return self._by_key[key]
        except KeyError:
            reason = f"no collateral for FMSPC {key.fmspc} ({key.tee}, {key.ca} CA)"
            raise AttestationFailed(f"quote verification failed: {reason}", reason=reason) from None

    def __repr__(self) -> str:
        return f"CollateralFiles({sorted(k.file_name() for k in self._by_key)})"


class CachedCollateral:
    """`CollateralCache` (async, one loop) as a blocking source for worker threads."""

    def __init__(self, cache: CollateralCache, loop: asyncio.AbstractEventLoop) -> None:
        self._cache = cache
        self._loop = loop

    def __call__(self, quote: bytes) -> Collateral:
        future = asyncio.run_coroutine_threadsafe(self._cache.get(quote), self._loop)
        return future.result(timeout=FETCH_TIMEOUT_SECONDS)
