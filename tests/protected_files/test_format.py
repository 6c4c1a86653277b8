"""Layout arithmetic and Gramine's path normalization, as tables of cases."""

from __future__ import annotations

import pytest

from sealserve.errors import InvalidArgument
from sealserve.protected_files import format as fmt


@pytest.mark.parametrize(
    ("plain", "stored"),
    [
        (0, 4096),
        (1, 4096),
        (3072, 4096),
        (3073, 12288),
        (396288, 401408),
        (396289, 409600),
        (5_000_000, 5_054_464),
    ],
)
def test_encrypted_size_matches_gramines_tool(plain, stored):
    assert fmt.encrypted_size(plain) == stored


@pytest.mark.parametrize(
    ("path", "bound"),
    [
        ("./out//tmp/../model/x", b"out/model/x"),
        ("saved_model.pb", b"saved_model.pb"),
        ("/data/a.bin", b"/data/a.bin"),
        ("/../a", b"/a"),
        ("../../a/b/..", b"../../a"),
        ("a/b/", b"a/b"),
        ("//x", b"/x"),
        (".", b""),
        ("models/résumé dir/1", "models/résumé dir/1".encode()),
    ],
)
def test_normalize_path_is_gramines_get_norm_path(path, bound):
    assert fmt.normalize_path(path) == bound


def test_paths_longer_than_771_bytes_cannot_be_bound():
    fmt.check_bound_path(b"a" * 771)
    with pytest.raises(InvalidArgument, match="too long"):
        fmt.check_bound_path(b"a" * 772)


def test_mht_tree_shape():
    assert fmt.data_node_physical(0) == 2
    assert fmt.data_node_physical(95) == 97
    assert fmt.mht_node_physical(1) == 98
    assert fmt.data_node_physical(96) == 99
    assert fmt.mht_parent(1) == (0, 0)
    assert fmt.mht_parent(33) == (1, 0)
    assert list(fmt.mht_children(0, 40)) == list(range(1, 33))
    assert list(fmt.mht_children(1, 40)) == list(range(33, 40))
