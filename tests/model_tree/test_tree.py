"""A whole model as a protected tree: mirrored encryption, the manifest's guarantees, and
all-or-nothing outputs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from sealserve.errors import AlreadyExists, DataLoss, PermissionDenied
from sealserve.model_tree import (
    MANIFEST_NAME,
    ProtectedTree,
    TreeIntegrityError,
    bound_path_in,
    decrypt_tree,
    encrypt_tree,
    rekey_tree,
)
from sealserve.protected_files import AuthenticationFailed, ProtectedFileReader


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A SavedModel-shaped tree with a small, an empty, a multi-node and a nested file."""
    root = tmp_path / "plain"
    (root / "variables").mkdir(parents=True)
    (root / "assets").mkdir()
    (root / "saved_model.pb").write_bytes(os.urandom(50_000))
    (root / "fingerprint.pb").write_bytes(b"")
    (root / "variables" / "variables.index").write_bytes(os.urandom(300))
    (root / "variables" / "variables.data-00000-of-00001").write_bytes(os.urandom(500_000))
    return root


@pytest.fixture
def enc_dir(tmp_path: Path, model_dir: Path, wrap_key: bytes) -> Path:
    out = tmp_path / "enc"
    encrypt_tree(model_dir, str(out), wrap_key)
    return out


def read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_tree_is_mirrored_and_every_file_encrypted(model_dir, enc_dir, wrap_key):
    plain = read_tree(model_dir)
    enc = read_tree(enc_dir)
    assert set(enc) == set(plain) | {MANIFEST_NAME}
    assert (enc_dir / "assets").is_dir()  # empty directories are mirrored too
    for relative, content in plain.items():
        assert content[:16] not in enc[relative] or not content  # no plaintext in the output
        with ProtectedFileReader(enc_dir / relative, wrap_key) as reader:
            assert reader.read_all() == content
            assert reader.bound_path == bound_path_in(str(enc_dir), relative)


def test_round_trip_through_decrypt(tmp_path, model_dir, enc_dir, wrap_key):
    out = tmp_path / "decrypted"
    manifest = decrypt_tree(ProtectedTree(enc_dir, wrap_key), out)
    assert read_tree(out) == read_tree(model_dir)
    assert (out / "assets").is_dir()
    assert oct((out / "saved_model.pb").stat().st_mode & 0o777) == "0o600"
    assert len(manifest.files) == 4


def test_manifest_pins_paths_sizes_digests_and_a_model_id(enc_dir, wrap_key):
    manifest = ProtectedTree(enc_dir, wrap_key).manifest
    assert [f.path for f in manifest.files] == [
        "fingerprint.pb",
        "saved_model.pb",
        "variables/variables.data-00000-of-00001",
        "variables/variables.index",
    ]
    assert manifest.entry("saved_model.pb").size == 50_000
    assert len(manifest.model_id) == 36
    assert manifest.bound_root == str(enc_dir)


def test_wrong_key_is_refused(enc_dir):
    with pytest.raises(AuthenticationFailed, match="authentication failed"):
        ProtectedTree(enc_dir, os.urandom(16))


def test_missing_file_is_named(enc_dir, wrap_key):
    (enc_dir / "variables" / "variables.index").unlink()
    with pytest.raises(TreeIntegrityError, match="'variables/variables.index' is missing"):
        ProtectedTree(enc_dir, wrap_key)


def test_added_file_is_named(enc_dir, wrap_key):
    shutil.copy(enc_dir / "saved_model.pb", enc_dir / "assets" / "extra.pb")
    with pytest.raises(TreeIntegrityError, match="unexpected file 'assets/extra.pb'"):
        ProtectedTree(enc_dir, wrap_key)


def test_swapped_files_are_named(enc_dir, wrap_key):
    a, b = enc_dir / "saved_model.pb", enc_dir / "variables" / "variables.index"
    a_bytes, b_bytes = a.read_bytes(), b.read_bytes()
    a.write_bytes(b_bytes)
    b.write_bytes(a_bytes)
    # the listing is still complete, but each file's authenticated path gives it away
    with pytest.raises(TreeIntegrityError, match="'saved_model.pb' belongs elsewhere"):
        ProtectedTree(enc_dir, wrap_key)


def test_truncated_file_is_refused(enc_dir, wrap_key):
    path = enc_dir / "variables" / "variables.data-00000-of-00001"
    path.write_bytes(path.read_bytes()[:-4096])
    with pytest.raises(DataLoss, match="truncated"):
        ProtectedTree(enc_dir, wrap_key)


def test_older_version_of_a_file_is_named(tmp_path, monkeypatch, model_dir, wrap_key):
    # The owner encrypted an earlier model to the same (relative) path with the same key; an
    # attacker puts that earlier file back. Gramine alone accepts it: right key, right path.
    older = tmp_path / "older-plain"
    shutil.copytree(model_dir, older)
    (older / "saved_model.pb").write_bytes(os.urandom(50_000))
    for workdir, source in (("then", older), ("now", model_dir)):
        (tmp_path / workdir).mkdir()
        monkeypatch.chdir(tmp_path / workdir)
        encrypt_tree(source, "enc", wrap_key)
    shutil.copy(tmp_path / "then/enc/saved_model.pb", "enc/saved_model.pb")
    ProtectedFileReader("enc/saved_model.pb", wrap_key, expected_path="enc/saved_model.pb").close()
    with pytest.raises(TreeIntegrityError, match="'saved_model.pb' does not match the manifest"):
        ProtectedTree("enc", wrap_key).verify()


def test_manifest_from_another_tree_is_refused(tmp_path, model_dir, enc_dir, wrap_key):
    other = tmp_path / "other"
    encrypt_tree(model_dir, str(other), wrap_key)
    shutil.copy(other / MANIFEST_NAME, enc_dir / MANIFEST_NAME)
    with pytest.raises(TreeIntegrityError, match="belongs elsewhere"):
        ProtectedTree(enc_dir, wrap_key)


def test_failed_decrypt_leaves_nothing_behind(tmp_path, enc_dir, wrap_key):
    data = enc_dir / "variables" / "variables.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[-100] ^= 1  # corrupt the last data node: found only after most plaintext was written
    data.write_bytes(bytes(raw))
    out = tmp_path / "decrypted"
    with pytest.raises(AuthenticationFailed):
        decrypt_tree(ProtectedTree(enc_dir, wrap_key), out)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_existing_output_is_never_replaced(tmp_path, model_dir, enc_dir, wrap_key):
    with pytest.raises(AlreadyExists):
        encrypt_tree(model_dir, str(enc_dir), wrap_key)
    (tmp_path / "empty").mkdir()
    with pytest.raises(AlreadyExists):
        decrypt_tree(ProtectedTree(enc_dir, wrap_key), tmp_path / "empty")


def test_expected_root_is_checked(tmp_path, enc_dir, wrap_key):
    with pytest.raises(PermissionDenied, match="is bound to"):
        decrypt_tree(ProtectedTree(enc_dir, wrap_key), tmp_path / "out", expected_root="/elsewhere")
    decrypt_tree(ProtectedTree(enc_dir, wrap_key), tmp_path / "out", expected_root=str(enc_dir))


def test_rekey_tree_rebinds_to_the_new_directory_and_keeps_node_keys(
    tmp_path, model_dir, enc_dir, wrap_key
):
    new_key = os.urandom(16)
    out = tmp_path / "rekeyed"
    manifest = rekey_tree(ProtectedTree(enc_dir, wrap_key), str(out), new_key)
    tree = ProtectedTree(out, new_key)
    tree.verify()
    assert manifest.model_id == ProtectedTree(enc_dir, wrap_key).manifest.model_id
    assert tree.manifest.bound_root == str(out)
    for relative in ("saved_model.pb", "variables/variables.data-00000-of-00001"):
        assert (out / relative).read_bytes()[4096:] == (enc_dir / relative).read_bytes()[4096:]
        assert tree.read_file(relative) == (model_dir / relative).read_bytes()
    with pytest.raises(AuthenticationFailed):
        ProtectedTree(out, wrap_key)


def test_reencrypt_tree_changes_every_node(tmp_path, model_dir, enc_dir, wrap_key):
    new_key = os.urandom(16)
    out = tmp_path / "reencrypted"
    rekey_tree(ProtectedTree(enc_dir, wrap_key), str(out), new_key, reencrypt=True)
    ProtectedTree(out, new_key).verify()
    old = (enc_dir / "saved_model.pb").read_bytes()
    new = (out / "saved_model.pb").read_bytes()
    assert len(old) == len(new)
    assert all(old[i : i + 4096] != new[i : i + 4096] for i in range(0, len(old), 4096))


def test_symlinks_are_refused(tmp_path, model_dir, wrap_key):
    (model_dir / "link").symlink_to("/etc/passwd")
    with pytest.raises(Exception, match="not a regular file"):
        encrypt_tree(model_dir, str(tmp_path / "out"), wrap_key)
    assert not (tmp_path / "out").exists()


def test_missing_parents_of_a_tree_output_are_created(tmp_path, model_dir, wrap_key):
    out = tmp_path / "models" / "resnet50" / "1"
    encrypt_tree(model_dir, str(out), wrap_key)
    ProtectedTree(out, wrap_key).verify()
