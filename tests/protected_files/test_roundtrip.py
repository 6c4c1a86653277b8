"""Our writer and reader against each other: sizes around every node boundary, both format
versions, random access, bounded memory, and wrap-key rotation."""

from __future__ import annotations

import io
import os
import random
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sealserve.protected_files import (
    AuthenticationFailed,
    ProtectedFileReader,
    open_metadata_node,
    rekey_metadata_node,
    write_protected,
)
from sealserve.protected_files import format as fmt
from tests.protected_files.vectors import Case
from tests.testvectors import vector_cases

ONE_LEVEL_END = fmt.INLINE_DATA_SIZE + fmt.DATA_SLOTS_PER_MHT * fmt.NODE_SIZE  # 396288
TWO_LEVEL_START = fmt.INLINE_DATA_SIZE + 33 * fmt.DATA_SLOTS_PER_MHT * fmt.NODE_SIZE  # 12979200
BOUNDARIES = [
    0,
    1,
    3071,
    3072,
    3073,
    4095,
    4096,
    4097,
    7168,
    7169,
    ONE_LEVEL_END - 1,
    ONE_LEVEL_END,
    ONE_LEVEL_END + 1,
    TWO_LEVEL_START,
    TWO_LEVEL_START + 1,
]


def encrypt(plain: bytes, key: bytes, path: str = "model/file", version: int = 2) -> bytes:
    out = io.BytesIO()
    write_protected(io.BytesIO(plain), len(plain), out, key, path.encode(), version=version)
    return out.getvalue()


def random_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


sizes = st.one_of(
    st.sampled_from(BOUNDARIES),
    st.sampled_from(BOUNDARIES[:-2]).flatmap(lambda b: st.integers(max(0, b - 2), b + 2)),
    st.integers(0, 3 * ONE_LEVEL_END),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(size=sizes, version=st.sampled_from([1, 2]), seed=st.integers(0, 2**32), data=st.data())
def test_round_trip_and_random_access(size, version, seed, data):
    key = random_bytes(16, seed + 1)
    plain = random_bytes(size, seed)
    enc = encrypt(plain, key, version=version)
    assert len(enc) == fmt.encrypted_size(size)
    with ProtectedFileReader(io.BytesIO(enc), key) as reader:
        assert reader.version == version
        assert reader.size == size
        assert reader.read_all() == plain
        for _ in range(3):
            a = data.draw(st.integers(0, size + 10))
            b = data.draw(st.integers(a, size + 4200))
            assert reader.pread(a, b - a) == plain[a:b]


@pytest.mark.parametrize("size", BOUNDARIES)
def test_every_boundary_size_round_trips_in_both_versions(size):
    plain = random_bytes(size, size)
    key = os.urandom(16)
    for version in (1, 2):
        with ProtectedFileReader(io.BytesIO(encrypt(plain, key, version=version)), key) as r:
            assert r.read_all() == plain


def test_two_encryptions_of_the_same_input_differ():
    key = os.urandom(16)
    plain = random_bytes(20000, 1)
    assert encrypt(plain, key) != encrypt(plain, key)


def test_reader_is_a_file_object():
    key = os.urandom(16)
    plain = random_bytes(50_000, 2)
    with ProtectedFileReader(io.BytesIO(encrypt(plain, key)), key) as reader:
        buffered = io.BufferedReader(reader, buffer_size=1000)
        assert buffered.read(10) == plain[:10]
        buffered.seek(40_000)
        assert buffered.read() == plain[40_000:]
        assert reader.seek(-5, io.SEEK_END) == len(plain) - 5
        assert reader.read(100) == plain[-5:]


class CountingFile(io.BytesIO):
    """Counts the bytes read from the stored (encrypted) file."""

    bytes_read = 0

    def read(self, n: int = -1) -> bytes:  # type: ignore[override]
        data = super().read(n)
        self.bytes_read += len(data)
        return data

    def readinto(self, buffer) -> int:  # type: ignore[override]
        n = super().readinto(buffer)
        self.bytes_read += n
        return n


def test_reading_a_range_decrypts_only_the_nodes_it_needs():
    # Gramine's own 13 MB file with a two-level MHT: a 100-byte read deep inside it reads
    # node 0 and the root MHT (at open), the data node's MHT, and that one data node.
    case = Case(vector_cases("public")[0].parent / "size_13000000")
    stored = CountingFile(case.enc)
    with ProtectedFileReader(stored, case.wrap_key) as reader:
        opened = stored.bytes_read
        assert opened == 2 * fmt.NODE_SIZE
        assert reader.pread(12_990_000, 100) == case.plain[12_990_000:12_990_100]
        # data node 3170 is the child of MHT 33, itself the child of MHT 1: three nodes
        assert stored.bytes_read - opened == 3 * fmt.NODE_SIZE


def test_writer_and_reader_memory_is_bounded_whatever_the_size(tmp_path):
    key = os.urandom(16)
    size = 24 * 1024 * 1024
    src = tmp_path / "plain"
    src.write_bytes(os.urandom(size))
    dst = tmp_path / "enc"
    tracemalloc.start()
    try:
        with open(src, "rb") as s, open(dst, "wb") as d:
            write_protected(s, size, d, key, b"enc")
        _, writer_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        with ProtectedFileReader(dst, key) as reader:
            total = sum(len(chunk) for chunk in reader.iter_chunks())
        _, reader_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == size
    # one 96-node group buffer (384 KiB) and a few MHT nodes, not the 24 MiB file
    assert writer_peak < 2 * 1024 * 1024
    assert reader_peak < 2 * 1024 * 1024


def test_source_shorter_than_announced_is_an_error():
    with pytest.raises(EOFError):
        write_protected(io.BytesIO(b"x" * 5000), 9000, io.BytesIO(), os.urandom(16), b"p")


def test_rekey_rewrites_only_the_metadata_node():
    old, new = os.urandom(16), os.urandom(16)
    plain = random_bytes(ONE_LEVEL_END * 3, 7)
    enc = encrypt(plain, old, path="models/m/1/saved_model.pb")
    node0 = rekey_metadata_node(enc[: fmt.NODE_SIZE], old, new)
    rekeyed = node0 + enc[fmt.NODE_SIZE :]
    with ProtectedFileReader(io.BytesIO(rekeyed), new) as reader:
        assert reader.read_all() == plain
        assert reader.bound_path == b"models/m/1/saved_model.pb"
    with pytest.raises(AuthenticationFailed):
        ProtectedFileReader(io.BytesIO(rekeyed), old)
    # a fresh nonce: the new metadata node shares nothing with the old one but the magic
    assert (
        open_metadata_node(node0, new, "x")[0].nonce
        != open_metadata_node(enc[: fmt.NODE_SIZE], old, "x")[0].nonce
    )


def test_rekey_can_rebind_the_path_and_keeps_the_version():
    old, new = os.urandom(16), os.urandom(16)
    enc = encrypt(b"hello" * 1000, old, path="a/b", version=1)
    node0 = rekey_metadata_node(enc[: fmt.NODE_SIZE], old, new, bound_path=b"c/d")
    with ProtectedFileReader(
        io.BytesIO(node0 + enc[fmt.NODE_SIZE :]), new, expected_path="c/d"
    ) as reader:
        assert reader.version == 1
        assert reader.read_all() == b"hello" * 1000


def test_rekey_with_the_wrong_old_key_is_refused():
    enc = encrypt(b"x", os.urandom(16))
    with pytest.raises(AuthenticationFailed):
        rekey_metadata_node(enc, os.urandom(16), os.urandom(16))
