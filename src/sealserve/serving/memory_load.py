"""Load a SavedModel whose plaintext exists only in this process's memory.

The files of a protected tree are decrypted chunk by chunk straight into TensorFlow's
in-memory file system (`ram://`), loaded from there, and the in-memory copy is deleted as soon
as TensorFlow holds the graph and variables — plaintext never reaches a disk, /tmp or /dev/shm.
Each load uses a fresh random `ram://` prefix, so concurrent loads never see each other's
files. Every file is verified against the tree's manifest before TensorFlow reads any of it.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

from sealserve.model_tree import ProtectedTree
from sealserve.serving.tensorflow_runtime import import_tensorflow


def load_protected_saved_model(tree: ProtectedTree, tags: Sequence[str] = ("serve",)) -> Any:
    """The `tf.saved_model.load` object of a protected tree, loaded from memory."""
    tf = import_tensorflow()

    root = f"ram://sealserve-{secrets.token_hex(8)}"
    try:
        for directory in tree.manifest.directories:
            tf.io.gfile.makedirs(f"{root}/{directory}")
        for entry in tree.manifest.files:
            with tf.io.gfile.GFile(f"{root}/{entry.path}", "wb") as out:
                for chunk in tree.iter_file(entry.path):
                    out.write(bytes(chunk))
        return tf.saved_model.load(root, tags=list(tags))
    finally:
        if tf.io.gfile.exists(root):
            tf.io.gfile.rmtree(root)
