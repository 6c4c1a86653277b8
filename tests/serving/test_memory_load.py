"""Protected SavedModels load from memory only, and only when the whole tree is authentic."""

from __future__ import annotations

import os

import pytest

from sealserve.model_tree import ProtectedTree, TreeIntegrityError, encrypt_tree
from sealserve.serving.memory_load import files_in_memory, load_protected_saved_model
from sealserve.serving.tensorflow_runtime import import_tensorflow


@pytest.fixture
def encrypted_model(tmp_path, half_plus_two, wrap_key):
    out = tmp_path / "enc"
    encrypt_tree(half_plus_two, str(out), wrap_key)
    return out


def test_encrypted_model_loads_and_runs_in_memory(encrypted_model, wrap_key):
    tf = import_tensorflow()
    model = load_protected_saved_model(ProtectedTree(encrypted_model, wrap_key))
    y = model.signatures["serving_default"](x=tf.constant([1.0, 2.0, 5.0]))["y"]
    assert y.numpy().tolist() == [2.5, 3.0, 4.5]
    # the in-memory copy of the files is gone once TensorFlow holds the model
    assert tf.io.gfile.glob("ram://sealserve-*") == []


def test_no_plaintext_reaches_temporary_file_systems(encrypted_model, wrap_key, half_plus_two):
    secret = (half_plus_two / "saved_model.pb").read_bytes()[-64:]
    watched = [d for d in ("/tmp", "/dev/shm", "/var/tmp") if os.path.isdir(d)]
    before = {d: set(os.listdir(d)) for d in watched}
    load_protected_saved_model(ProtectedTree(encrypted_model, wrap_key))
    for d in watched:
        for name in set(os.listdir(d)) - before[d]:
            path = os.path.join(d, name)
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    assert secret not in f.read(), f"plaintext in {path}"


def test_a_corrupted_file_stops_the_load_before_tensorflow_reads_it(encrypted_model, wrap_key):
    tf = import_tensorflow()
    path = encrypted_model / "saved_model.pb"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(Exception, match="authentication failed"):
        load_protected_saved_model(ProtectedTree(encrypted_model, wrap_key))
    assert tf.io.gfile.glob("ram://sealserve-*") == []


def test_a_missing_file_is_refused(encrypted_model, wrap_key):
    (encrypted_model / "saved_model.pb").unlink()
    with pytest.raises(TreeIntegrityError, match="'saved_model.pb' is missing"):
        load_protected_saved_model(ProtectedTree(encrypted_model, wrap_key))


def test_in_memory_copy_is_removed_even_with_prefix_sharing_directories(
    tmp_path, half_plus_two, wrap_key
):
    # ram://'s recursive delete fails on `assets` beside `assets.extra`: files must still go
    tf = import_tensorflow()
    plain = tmp_path / "plain"
    import shutil

    shutil.copytree(half_plus_two, plain)
    (plain / "assets.extra").mkdir()
    (plain / "assets.extra" / "notes").write_bytes(b"secret notes")
    encrypt_tree(plain, str(tmp_path / "enc"), wrap_key)
    load_protected_saved_model(ProtectedTree(tmp_path / "enc", wrap_key))
    assert tf.io.gfile.glob("ram://sealserve-*") == []
    assert tf.io.gfile.glob("ram://sealserve-*/*/*") == []


def test_decrypted_chunks_are_overwritten_once_written():
    chunks = [bytearray(b"secret weights " * 1000), bytearray(b"and the rest")]
    expected = b"".join(bytes(c) for c in chunks)
    tf = import_tensorflow()
    with files_in_memory([], [("w", iter(chunks))]) as root:
        with tf.io.gfile.GFile(f"{root}/w", "rb") as f:
            assert f.read() == expected
        assert all(not any(chunk) for chunk in chunks)
    assert not tf.io.gfile.exists(root)


def test_a_protected_file_readers_plaintext_buffer_is_overwritten_on_close(tmp_path, wrap_key):
    from sealserve.model_tree import encrypt_file
    from sealserve.protected_files import ProtectedFileReader

    plain = tmp_path / "plain"
    plain.write_bytes(b"weights!" * 40_000)
    encrypt_file(plain, str(tmp_path / "enc"), wrap_key)
    reader = ProtectedFileReader(tmp_path / "enc", wrap_key)
    assert b"".join(bytes(c) for c in reader.iter_chunks()) == plain.read_bytes()
    assert any(reader._group)
    reader.close()
    assert not any(reader._group)


@pytest.mark.parametrize("size_hint", [0, 5, 11, 64], ids=["none", "short", "exact", "long"])
def test_kept_files_are_whole_and_every_buffer_they_outgrew_is_wiped(monkeypatch, size_hint):
    """The files the loader reads itself are kept as they stream past, in one buffer of the
    manifest's size; a wrong size still keeps the whole file, and no plaintext is left in a
    buffer that was replaced."""
    from sealserve.serving import memory_load

    dropped: list[bytearray] = []
    real_grown = memory_load._grown

    def grown(buffer, filled, size):
        dropped.append(buffer)
        return real_grown(buffer, filled, size)

    monkeypatch.setattr(memory_load, "_grown", grown)
    kept: dict[str, bytearray] = {}
    chunks = [bytearray(b"hello"), bytearray(b" world")]
    files = memory_load.kept_along(
        [("saved_model.pb", iter(chunks)), ("variables/data", iter([b"other"]))],
        ["saved_model.pb"],
        {"saved_model.pb": size_hint},
        kept,
    )
    passed = [(path, [bytes(c) for c in contents]) for path, contents in files]
    assert passed == [("saved_model.pb", [b"hello", b" world"]), ("variables/data", [b"other"])]
    assert kept == {"saved_model.pb": bytearray(b"hello world")}
    assert (size_hint == 11) == (dropped == [])
    assert all(buffer == bytes(len(buffer)) for buffer in dropped)
    memory_load.wipe_all(kept)
    assert kept["saved_model.pb"] == bytes(11)
