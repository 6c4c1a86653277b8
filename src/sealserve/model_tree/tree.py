"""A whole model as a protected tree: encrypt, decrypt, verify and rekey files and directories.

A protected tree mirrors a plaintext directory (a SavedModel, or a model base path with
version directories): every file is a Gramine protected file bound to
`normalize(output_dir + "/" + relative_path)`, exactly as `gramine-sgx-pf-crypt` binds files
in directory mode, plus the encrypted manifest (see `manifest.py`). `ProtectedTree` opens a
tree for reading in memory and refuses it, naming the file, when a file is missing, added,
swapped, truncated or replaced by another version.

Every output is all-or-nothing (`fsio`); plaintext is written only where the user asked
(`decrypt`), with private permissions. Functions are safe to call from several threads on
different trees.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path

from sealserve.errors import DataLoss, InvalidArgument, NotFound, PermissionDenied
from sealserve.fsio import (
    PRIVATE_DIR_MODE,
    PRIVATE_FILE_MODE,
    atomic_output_dir,
    atomic_output_file,
    copy_file_contents,
)
from sealserve.model_tree.manifest import (
    MANIFEST_NAME,
    FileEntry,
    ModelManifest,
    new_model_id,
)
from sealserve.protected_files import (
    DEFAULT_VERSION,
    BoundPathMismatch,
    ProtectedFileReader,
    normalize_path,
    rekey_metadata_node,
    write_protected,
)
from sealserve.protected_files.format import NODE_SIZE, display_path

Progress = Callable[[int], None] | None
_HASH_CHUNK = 1 << 20


class TreeIntegrityError(DataLoss):
    """The tree does not match its manifest."""


def bound_path_in(root: str, relative: str) -> bytes:
    """The path a file of a tree bound to `root` carries (Gramine's directory mode)."""
    return normalize_path(f"{root}/{relative}")


def is_protected_tree(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / MANIFEST_NAME).is_file()


def bound_root_matches(bound_root: str, served_as: str | os.PathLike[str]) -> bool:
    """Whether a tree bound to `bound_root` may be served from directory `served_as`.

    An absolute bound root must be the served path exactly (both Gramine-normalized, the
    served path made absolute). A relative one (the owner encrypted with `-o
    models/m/1`) binds the tree relative to the model repository: it must equal the served
    path's last components (`/srv/models/m/1` serves it; `/srv/models/m/9` does not)."""
    bound = normalize_path(bound_root)
    served = normalize_path(os.path.abspath(os.fspath(served_as)))
    if not bound or bound in (b".", b"/"):
        return False
    if bound.startswith(b"/"):
        return bound == served
    return served.endswith(b"/" + bound)


# -- reading a tree ----------------------------------------------------------------------


class ProtectedTree:
    """An encrypted model tree opened with its wrap key.

    Opening checks the listing against the manifest and authenticates every file's metadata
    node (bound path and size: a swapped, moved or truncated file is found before any data is
    decrypted); each file's content digest is checked as it is read."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        wrap_key: bytes,
        *,
        served_as: str | os.PathLike[str] | None = None,
    ) -> None:
        """`served_as`: the path the tree must be bound to (see `bound_root_matches`); a
        tree bound elsewhere (a copy of another version or model) is refused."""
        self.root = Path(root)
        self.wrap_key = wrap_key
        manifest_path = self.root / MANIFEST_NAME
        if not self.root.is_dir():
            raise NotFound(f"{self.root} is not a directory")
        if not manifest_path.is_file():
            raise TreeIntegrityError(
                f"{self.root} has no {MANIFEST_NAME}: not a sealserve-encrypted model tree"
            )
        with ProtectedFileReader(manifest_path, wrap_key) as reader:
            self.manifest = ModelManifest.from_json(reader.read_all(), str(manifest_path))
            self.version = reader.version
            if reader.bound_path != bound_path_in(self.manifest.bound_root, MANIFEST_NAME):
                raise TreeIntegrityError(
                    f"{manifest_path} belongs to another tree (bound to "
                    f"'{display_path(reader.bound_path)}')"
                )
        if served_as is not None and not bound_root_matches(self.manifest.bound_root, served_as):
            raise TreeIntegrityError(
                f"{self.root} is bound to '{self.manifest.bound_root}', not to "
                f"'{os.fspath(served_as)}' (a copy of another version or model)"
            )
        self._check_listing()

    def _check_listing(self) -> None:
        present, directories = list_tree(self.root)
        listed = {f.path for f in self.manifest.files}
        for path in sorted(listed - set(present)):
            raise TreeIntegrityError(f"{self.root}: file '{path}' is missing")
        for path in sorted(set(present) - listed):
            raise TreeIntegrityError(f"{self.root}: unexpected file '{path}' (not in the manifest)")
        # the directory list too: an added directory (even empty) can change what a
        # loader finds (e.g. a variables/ or assets.extra/ that the owner never shipped)
        listed_dirs = set(self.manifest.directories)
        for path in sorted(listed_dirs - set(directories)):
            raise TreeIntegrityError(f"{self.root}: directory '{path}' is missing")
        for path in sorted(set(directories) - listed_dirs):
            raise TreeIntegrityError(
                f"{self.root}: unexpected directory '{path}' (not in the manifest)"
            )
        for entry in self.manifest.files:
            self.open_file(entry.path).close()

    def open_file(self, relative: str) -> ProtectedFileReader:
        entry = self._entry(relative)
        try:
            reader = ProtectedFileReader(
                self.root / relative,
                self.wrap_key,
                expected_path=bound_path_in(self.manifest.bound_root, relative),
                name=str(self.root / relative),
            )
        except BoundPathMismatch:
            raise TreeIntegrityError(
                f"{self.root}: file '{relative}' belongs elsewhere (swapped with another file "
                "or copied from another tree)"
            ) from None
        if reader.size != entry.size:
            reader.close()
            raise self._mismatch(relative)
        return reader

    def iter_file(self, relative: str) -> Iterator[memoryview]:
        """The plaintext of one file in chunks; raises at the end if its digest is not the
        manifest's, so consumers must discard what they got when iteration fails."""
        entry = self._entry(relative)
        digest = hashlib.sha256()
        with self.open_file(relative) as reader:
            for chunk in reader.iter_chunks():
                digest.update(chunk)
                yield chunk
        if digest.hexdigest() != entry.sha256:
            raise self._mismatch(relative)

    def read_file(self, relative: str) -> bytes:
        return b"".join(bytes(c) for c in self.iter_file(relative))

    def verify(self, progress: Progress = None) -> None:
        for entry in self.manifest.files:
            for chunk in self.iter_file(entry.path):
                if progress:
                    progress(len(chunk))

    def _entry(self, relative: str) -> FileEntry:
        entry = self.manifest.entry(relative)
        if entry is None:
            raise NotFound(f"{self.root}: no file '{relative}' in this model")
        return entry

    def _mismatch(self, relative: str) -> TreeIntegrityError:
        return TreeIntegrityError(
            f"{self.root}: file '{relative}' does not match the manifest (replaced by another "
            "or an older version, or truncated)"
        )


def list_tree(root: Path) -> tuple[list[str], list[str]]:
    """(files, directories) under root as sorted relative '/' paths, manifest excluded.

    Only regular files and directories are allowed: a symlink or device could point a
    model outside the tree."""
    files: list[str] = []
    directories: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        for name in dirnames + filenames:
            path = base / name
            mode = path.lstat().st_mode
            relative = path.relative_to(root).as_posix()
            if stat.S_ISDIR(mode):
                directories.append(relative)
            elif stat.S_ISREG(mode):
                if relative != MANIFEST_NAME:
                    files.append(relative)
            else:
                raise InvalidArgument(f"{path} is not a regular file or directory")
        dirnames.sort()
    return sorted(files), sorted(directories)


# -- writing trees -----------------------------------------------------------------------


@contextlib.contextmanager
def _new_tree(
    out: str | os.PathLike[str], directories: Iterable[str], *, mode: int = 0o755
) -> Iterator[Path]:
    """A temporary directory with the tree's subdirectories, published as `out` at the end
    (at its Gramine-normalized path, where the files are bound)."""
    with atomic_output_dir(_as_path(normalize_path(os.fspath(out))), mode=mode) as tmp:
        for directory in directories:
            (tmp / directory).mkdir(mode=mode)
        yield tmp


def _bound_root(out: str) -> str:
    return normalize_path(out).decode("utf-8", "surrogateescape")


# -- encrypting --------------------------------------------------------------------------


def encrypt_file(
    src: str | os.PathLike[str],
    out: str,
    wrap_key: bytes,
    *,
    version: int = DEFAULT_VERSION,
    progress: Progress = None,
) -> bytes:
    """Encrypt one file to `out`, bound to Gramine's normalization of `out`, and written
    there (as Gramine's tool does: `a/tmp/../b` needs no `a/tmp`); returns the bound path."""
    bound = normalize_path(out)
    with _open_input(Path(src)) as source, atomic_output_file(_as_path(bound)) as dst:
        write_protected(
            source, _size(source), dst, wrap_key, bound, version=version, progress=progress
        )
    return bound


def encrypt_tree(
    src: str | os.PathLike[str],
    out: str,
    wrap_key: bytes,
    *,
    version: int = DEFAULT_VERSION,
    model_id: str | None = None,
    bound_root: str | None = None,
    progress: Progress = None,
) -> ModelManifest:
    """Mirror directory `src` into `out`, every file encrypted, plus the manifest. Files are
    bound to `bound_root` (default `out`): the path the server will load the tree from, when
    it is written elsewhere first (a staging directory renamed into place)."""
    src_root = Path(src)
    files, directories = list_tree(src_root)
    bind = out if bound_root is None else bound_root
    entries = []
    with _new_tree(out, directories) as tmp:
        for relative in files:
            with (
                _open_input(src_root / relative) as source,
                atomic_output_file(tmp / relative) as dst,
            ):
                size = _size(source)
                write_protected(
                    source,
                    size,
                    dst,
                    wrap_key,
                    bound_path_in(bind, relative),
                    version=version,
                    progress=progress,
                )
                entries.append(FileEntry(relative, size, _sha256_of(source)))
        manifest = ModelManifest(
            model_id=model_id or new_model_id(),
            bound_root=_bound_root(bind),
            files=tuple(entries),
            directories=tuple(directories),
        )
        _write_manifest(tmp, manifest, wrap_key, version)
    return manifest


def _write_manifest(
    tree: Path, manifest: ModelManifest, wrap_key: bytes, version: int, *, replace: bool = False
) -> None:
    raw = manifest.to_json()
    with atomic_output_file(tree / MANIFEST_NAME, replace=replace) as dst:
        write_protected(
            io.BytesIO(raw),
            len(raw),
            dst,
            wrap_key,
            bound_path_in(manifest.bound_root, MANIFEST_NAME),
            version=version,
        )


# -- decrypting --------------------------------------------------------------------------


def decrypt_file(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    wrap_key: bytes,
    *,
    expected_path: str | bytes | None = None,
    progress: Progress = None,
) -> ProtectedFileReader:
    """Decrypt one protected file to `out` (mode 0600); returns the (closed) reader for its
    header facts."""
    with (
        _open_input(Path(src)) as source,
        ProtectedFileReader(source, wrap_key, expected_path=expected_path, name=str(src)) as reader,
        atomic_output_file(Path(out), mode=PRIVATE_FILE_MODE) as dst,
    ):
        for chunk in reader.iter_chunks():
            dst.write(chunk)
            if progress:
                progress(len(chunk))
    return reader


def decrypt_tree(
    tree: ProtectedTree,
    out: str | os.PathLike[str],
    *,
    expected_root: str | bytes | None = None,
    progress: Progress = None,
) -> ModelManifest:
    """Decrypt a whole tree to `out` (private permissions), checking it against its
    manifest; nothing is left at `out` if any file fails."""
    _check_root(tree, expected_root)
    with _new_tree(out, tree.manifest.directories, mode=PRIVATE_DIR_MODE) as tmp:
        for entry in tree.manifest.files:
            with atomic_output_file(tmp / entry.path, mode=PRIVATE_FILE_MODE) as dst:
                for chunk in tree.iter_file(entry.path):
                    dst.write(chunk)
                    if progress:
                        progress(len(chunk))
    return tree.manifest


def _check_root(tree: ProtectedTree, expected_root: str | bytes | None) -> None:
    if expected_root is None:
        return
    expected = normalize_path(expected_root)
    if normalize_path(tree.manifest.bound_root) != expected:
        raise PermissionDenied(
            f"{tree.root} is bound to '{tree.manifest.bound_root}', not '{display_path(expected)}'"
        )


# -- rekeying ----------------------------------------------------------------------------


def rekey_file(
    src: str | os.PathLike[str],
    out: str,
    old_key: bytes,
    new_key: bytes,
    *,
    reencrypt: bool = False,
    progress: Progress = None,
) -> None:
    """Rotate a file's wrap key, into `out` bound to `out`'s path, or in place when `out` is
    `src` (then only the 4 KiB metadata node is rewritten, with one aligned write)."""
    src_path = Path(src)
    bound = normalize_path(out)
    out_path = _as_path(bound)
    in_place = _same_file(src_path, out_path)
    if reencrypt:
        if in_place:
            raise InvalidArgument(
                "--reencrypt writes a new file: give an output other than the input"
            )
        with ProtectedFileReader(src_path, old_key) as reader, atomic_output_file(out_path) as dst:
            write_protected(
                reader, reader.size, dst, new_key, bound, version=reader.version, progress=progress
            )
        return
    with _open_input(src_path) as source:
        # opening authenticates node 0 and checks the file's length against its size
        ProtectedFileReader(source, old_key, name=str(src)).close()
        source.seek(0)
        node0 = source.read(NODE_SIZE)
        new_node0 = rekey_metadata_node(
            node0, old_key, new_key, bound_path=None if in_place else bound, name=str(src)
        )
        if in_place:
            _rewrite_node0(src_path, new_node0)
            return
        with atomic_output_file(out_path) as dst:
            copy_file_contents(source, dst)
            dst.seek(0)
            dst.write(new_node0)


def rekey_tree(
    tree: ProtectedTree,
    out: str,
    new_key: bytes,
    *,
    reencrypt: bool = False,
    progress: Progress = None,
) -> ModelManifest:
    """Rotate the wrap key of an opened tree into a new directory `out` (bound to it)."""
    old_key = tree.wrap_key
    if reencrypt:
        return encrypt_tree_from(tree, out, new_key, progress=progress)
    manifest = replace(tree.manifest, bound_root=_bound_root(out))
    with _new_tree(out, manifest.directories) as tmp:
        for entry in manifest.files:
            tree.open_file(entry.path).close()  # authenticates node 0, checks path and size
            with (
                _open_input(tree.root / entry.path) as source,
                atomic_output_file(tmp / entry.path) as dst,
            ):
                node0 = source.read(NODE_SIZE)
                copy_file_contents(source, dst)
                dst.seek(0)
                dst.write(
                    rekey_metadata_node(
                        node0, old_key, new_key, bound_path=bound_path_in(out, entry.path)
                    )
                )
            if progress:
                progress(entry.size)
        _write_manifest(tmp, manifest, new_key, tree.version)
    return manifest


def encrypt_tree_from(
    tree: ProtectedTree, out: str, wrap_key: bytes, *, progress: Progress = None
) -> ModelManifest:
    """Re-encrypt an opened tree under `wrap_key` with fresh node keys, keeping its model id.
    The source is verified against its manifest first, so only authentic content is copied."""
    tree.verify()
    manifest = replace(tree.manifest, bound_root=_bound_root(out))
    with _new_tree(out, manifest.directories) as tmp:
        for entry in manifest.files:
            with tree.open_file(entry.path) as reader, atomic_output_file(tmp / entry.path) as dst:
                write_protected(
                    reader,
                    reader.size,
                    dst,
                    wrap_key,
                    bound_path_in(out, entry.path),
                    version=reader.version,
                    progress=progress,
                )
        _write_manifest(tmp, manifest, wrap_key, tree.version)
    return manifest


def _rewrite_node0(path: Path, node0: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        if os.pwrite(fd, node0, 0) != NODE_SIZE:
            raise OSError(f"short write to {path}")
        os.fsync(fd)
    finally:
        os.close(fd)


# -- helpers -----------------------------------------------------------------------------


def _open_input(path: Path):  # noqa: ANN202 - a BinaryIO context manager
    try:
        if path.is_dir():
            raise InvalidArgument(f"{path} is a directory")
        return open(path, "rb")  # noqa: SIM115 - used as a context manager by callers
    except FileNotFoundError:
        raise NotFound(f"{path} not found") from None
    except PermissionError:
        raise PermissionDenied(f"cannot read {path}: permission denied") from None


def _as_path(normalized: bytes) -> Path:
    if not normalized:
        raise InvalidArgument("the output path is empty once normalized")
    return Path(os.fsdecode(normalized))


def _size(f) -> int:  # noqa: ANN001
    return os.fstat(f.fileno()).st_size


def _sha256_of(f) -> str:  # noqa: ANN001
    f.seek(0)
    return hashlib.file_digest(f, "sha256").hexdigest()


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False
