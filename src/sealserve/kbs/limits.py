"""What an unauthenticated client may cost the KBS: a per-client budget of anonymous work and
per-client / total connection caps.

- `client_key(address)`: who "a client" is — its IP address, IPv6 grouped by /64 (one host
  usually owns a whole /64, so per-address limits would not hold there).
- `AnonymousBudget`: a token bucket per client. Every request that is not (yet) backed by an
  attestation costs one token — a challenge (`/auth`), an attest, and any request refused
  with a 4xx; a successful attest gives its own cost and its challenge's back. A TEE doing
  auth → attest → resource therefore never runs dry however often it comes, while a client
  that only opens sessions, sends bogus evidence or probes paths is limited to `rate` per
  second after a burst of `burst`. The table of buckets is bounded (least recently used
  buckets are dropped, which only ever forgives).
- `ConnectionCaps`: at most `per_client` open connections per client and `total` overall,
  so idle connections from one address cannot take every file descriptor.

Not thread-safe: both are used from the HTTP adapter's event loop only.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

#: Default budget: a burst of 100 anonymous requests, then 20 per second, per client.
DEFAULT_BURST = 100.0
DEFAULT_RATE = 20.0
_MAX_TRACKED_CLIENTS = 65_536


def client_key(address: str | None) -> str:
    """The identity rate limits apply to: the IPv4 address, or the IPv6 /64."""
    if not address:
        return "unknown"
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


@dataclass
class _Bucket:
    tokens: float
    updated: float


class AnonymousBudget:
    """Token buckets of anonymous work, one per client (see the module docstring)."""

    def __init__(
        self,
        *,
        rate: float = DEFAULT_RATE,
        burst: float = DEFAULT_BURST,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = _MAX_TRACKED_CLIENTS,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("the anonymous request budget needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._max_clients = max_clients
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def _bucket(self, client: str) -> _Bucket:
        now = self._clock()
        bucket = self._buckets.get(client)
        if bucket is None:
            bucket = _Bucket(self.burst, now)
            self._buckets[client] = bucket
            if len(self._buckets) > self._max_clients:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(client)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
        return bucket

    def exhausted(self, client: str) -> bool:
        """True when `client` has no anonymous request left right now."""
        return self._bucket(client).tokens < 1.0

    def charge(self, client: str, cost: float = 1.0) -> None:
        bucket = self._bucket(client)
        bucket.tokens = max(-self.burst, bucket.tokens - cost)

    def refund(self, client: str, amount: float) -> None:
        bucket = self._bucket(client)
        bucket.tokens = min(self.burst, bucket.tokens + amount)


class ConnectionCaps:
    """Counts open connections per client and in total (see the module docstring)."""

    def __init__(self, *, per_client: int, total: int) -> None:
        self.per_client = per_client
        self.total = total
        self._open: dict[str, int] = {}
        self._count = 0

    @property
    def open_connections(self) -> int:
        return self._count

    def admit(self, client: str) -> bool:
        if self._count >= self.total or self._open.get(client, 0) >= self.per_client:
            return False
        self._open[client] = self._open.get(client, 0) + 1
        self._count += 1
        return True

    def release(self, client: str) -> None:
        left = self._open.get(client, 0) - 1
        if left <= 0:
            self._open.pop(client, None)
        else:
            self._open[client] = left
        self._count = max(0, self._count - 1)
