"""A whole model as a protected tree: every file a Gramine protected file, plus an encrypted
manifest that pins the tree's exact content. Never imports TensorFlow or network code."""

from sealserve.model_tree.manifest import MANIFEST_NAME, FileEntry, ModelManifest
from sealserve.model_tree.tree import (
    ProtectedTree,
    TreeIntegrityError,
    bound_path_in,
    bound_root_matches,
    decrypt_file,
    decrypt_tree,
    encrypt_file,
    encrypt_tree,
    is_protected_tree,
    rekey_file,
    rekey_tree,
)

__all__ = [
    "MANIFEST_NAME",
    "FileEntry",
    "ModelManifest",
    "ProtectedTree",
    "TreeIntegrityError",
    "bound_path_in",
    "bound_root_matches",
    "decrypt_file",
    "decrypt_tree",
    "encrypt_file",
    "encrypt_tree",
    "is_protected_tree",
    "rekey_file",
    "rekey_tree",
]
