"""Reading Gramine's vectors: their case files, and the per-node keys a vector was written
with (recovered by walking its MHT), so our writer can be asked to reproduce it exactly."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from sealserve.protected_files import format as fmt
from sealserve.protected_files import open_metadata_node
from sealserve.protected_files.crypto import gcm_decrypt


@dataclass
class Case:
    directory: Path

    @property
    def info(self) -> dict:
        return json.loads((self.directory / "case.json").read_text())

    @property
    def wrap_key(self) -> bytes:
        return (self.directory / "wrap-key").read_bytes()

    @property
    def enc(self) -> bytes:
        return (self.directory / "enc.bin").read_bytes()

    @property
    def plain(self) -> bytes:
        return (self.directory / "plain.bin").read_bytes()


@dataclass
class RecoveredKeys:
    """`NodeKeys` holding exactly the randomness a vector was written with."""

    metadata_nonce: bytes
    data_keys: dict[int, bytes] = field(default_factory=dict)
    mht_keys: dict[int, bytes] = field(default_factory=dict)

    def nonce(self) -> bytes:
        return self.metadata_nonce

    def data_node_keys(self, first: int, count: int) -> bytes:
        return b"".join(self.data_keys[d] for d in range(first, first + count))

    def mht_node_key(self, m: int) -> bytes:
        return self.mht_keys[m]


def recover_keys(enc: bytes, wrap_key: bytes) -> tuple[fmt.Header, fmt.Metadata, RecoveredKeys]:
    header, metadata = open_metadata_node(enc[: fmt.NODE_SIZE], wrap_key, "vector")
    keys = RecoveredKeys(header.nonce)
    mht_count = fmt.mht_node_count(metadata.size)
    data_count = fmt.data_node_count(metadata.size)
    macs = {0: metadata.root_mht_mac}
    if mht_count:
        keys.mht_keys[0] = metadata.root_mht_key
    for m in range(mht_count):
        start = fmt.mht_node_physical(m) * fmt.NODE_SIZE
        plain = gcm_decrypt(keys.mht_keys[m], enc[start : start + fmt.NODE_SIZE], macs[m])
        assert plain is not None, f"MHT {m} does not authenticate"
        for d in range(
            m * fmt.DATA_SLOTS_PER_MHT, min(data_count, (m + 1) * fmt.DATA_SLOTS_PER_MHT)
        ):
            offset = fmt.data_entry_offset(d)
            keys.data_keys[d] = plain[offset : offset + fmt.KEY_SIZE]
        for child in fmt.mht_children(m, mht_count):
            offset = fmt.child_entry_offset(fmt.mht_parent(child)[1])
            keys.mht_keys[child] = plain[offset : offset + fmt.KEY_SIZE]
            macs[child] = plain[offset + fmt.KEY_SIZE : offset + fmt.ENTRY_SIZE]
    return header, metadata, keys
