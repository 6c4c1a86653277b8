"""Where a model's wrap key comes from: the `KeyProvider` interface and its static source.

The server asks for a key by model name just before it loads a protected version, and holds
it only as long as the load needs it. `StaticKeyProvider` serves keys read from files given
on the command line (`--model_key NAME=PATH`); the key broker client of the attestation issue
implements the same protocol. Thread safe.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Protocol

from sealserve.errors import FailedPrecondition, InvalidArgument
from sealserve.keyfile import read_wrap_key


class KeyProvider(Protocol):
    def key_for(self, name: str) -> bytes:
        """The wrap key of `name`, or a SealserveError saying why it cannot be had."""
        ...


class StaticKeyProvider:
    """Keys read once from local key files, by name."""

    def __init__(self, keys: Mapping[str, bytes]) -> None:
        self._keys = dict(keys)

    @classmethod
    def from_flags(cls, flags: list[str]) -> StaticKeyProvider:
        """Parse `NAME=PATH` flags and read each key file (errors name the flag)."""
        keys: dict[str, bytes] = {}
        for flag in flags:
            name, sep, path = flag.partition("=")
            if not sep or not name or not path:
                raise InvalidArgument(f"--model_key must be NAME=PATH, got {flag!r}")
            if name in keys:
                raise InvalidArgument(f"--model_key gives a key for {name!r} twice")
            keys[name] = read_wrap_key(os.path.expanduser(path))
        return cls(keys)

    def key_for(self, name: str) -> bytes:
        try:
            return self._keys[name]
        except KeyError:
            raise FailedPrecondition(
                f"model {name} is encrypted but no key was given for it (--model_key {name}=PATH)"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._keys)

    def __repr__(self) -> str:  # never the keys themselves
        return f"StaticKeyProvider(names={self.names()})"


class FallbackKeyProvider:
    """Keys from `first` where it has them (local key files), otherwise from `then` (the
    key broker)."""

    def __init__(self, first: StaticKeyProvider, then: KeyProvider) -> None:
        self.first, self.then = first, then

    def key_for(self, name: str) -> bytes:
        if name in self.first.names():
            return self.first.key_for(name)
        return self.then.key_for(name)

    def __repr__(self) -> str:
        return f"FallbackKeyProvider({self.first!r}, {self.then!r})"
