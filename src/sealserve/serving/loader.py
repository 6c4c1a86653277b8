"""Loading one model version: key → decryption into memory → a runtime → warmup.

What a version directory must be depends on its model (`ModelTrust`, from measured flags):
- a model with a key (`--model_key`, or any model with a key broker) serves only a
  sealserve protected tree whose manifest is authenticated by that key, bound to this very
  directory (`base_path/<version>`), with exactly the files and directories it lists, at or
  above the owner's pinned minimum version and with the pinned model id; the tree is
  decrypted into `ram://` (see `memory_load`). Anything else — a plain SavedModel dropped in,
  a copy without its manifest, a copy of another version, an older tree — is refused with
  PERMISSION_DENIED or DATA_LOSS, so that version ends in END and the others keep serving;
- a model without a key serves plain SavedModels only, and refuses protected files (it has
  no key to authenticate them with).

All expensive work happens in `load()` (TF Serving's Loader idea); the result is a `Servable`.
The model's `RuntimeSpec` picks what runs its signatures: a TensorFlow Session (the default),
or OpenVINO (`runtimes.openvino`: converted in a conversion process that gets the decrypted
files through a pipe, checked against TensorFlow on the warm-up requests; signatures it
cannot convert stay on TensorFlow). The loader reads `saved_model.pb` and the warm-up file
itself, from plaintext it keeps in memory (`memory_load.kept_along`) with TensorFlow's
protos only: a model whose signatures all run on OpenVINO never starts TensorFlow's runtime
in this process, nor puts its files into `ram://` here.
With `metrics`, each load attempt (outcome, duration) and the decryption (plaintext bytes,
time) are recorded, and the servable reports its run times once warmup is done.
A key provider may also pin models (the key broker's resource metadata): if it has a
`pin_for(name) -> ModelPin | None` method, its pin is applied with the flags' (the
stricter of both). A loader is used by one thread at a time.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sealserve.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    SealserveError,
)
from sealserve.model_tree import MANIFEST_NAME, ProtectedTree, is_protected_tree
from sealserve.model_tree.tree import list_tree
from sealserve.protected_files.format import FILE_ID, GRAPHENE_FILE_ID
from sealserve.serving import tfrecord
from sealserve.serving.bounded_ops import bounded_signatures
from sealserve.serving.graph_call import GraphCall
from sealserve.serving.keys import KeyProvider
from sealserve.serving.memory_load import (
    Files,
    SavedModelRoot,
    files_in_memory,
    kept_along,
    tree_files,
    tree_in_memory,
    wipe_all,
)
from sealserve.serving.model_config import ModelPin, ModelTrust
from sealserve.serving.runtimes import DEFAULT_RUNTIME, OPENVINO, RuntimeSpec
from sealserve.serving.runtimes.conversion import ConversionProcess
from sealserve.serving.runtimes.openvino_worker import FileSource
from sealserve.serving.servable import Runner, Servable
from sealserve.serving.session_bundle import SessionBundle
from sealserve.serving.tensorflow_runtime import import_tensorflow

if TYPE_CHECKING:
    from sealserve.serving.metrics import Metrics

log = logging.getLogger(__name__)

SAVED_MODEL_PB = "saved_model.pb"
SAVED_MODEL_PBTXT = "saved_model.pbtxt"
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
KEPT_FILES = (SAVED_MODEL_PB, SAVED_MODEL_PBTXT, WARMUP_FILE)  # what the loader reads itself
INIT_OP_SIGNATURE = "__saved_model_init_op"  # TF2's initializer, listed as a signature
MAX_WARMUP_RECORDS = 1000  # as TF Serving's saved_model_warmup


@dataclass(frozen=True)
class LoadOptions:
    tags: tuple[str, ...] = ("serve",)
    warmup: bool = True


class VersionLoader:
    def __init__(
        self,
        name: str,
        version: int,
        path: Path,
        keys: KeyProvider,
        options: LoadOptions,
        metrics: Metrics | None = None,
        runtime: RuntimeSpec = DEFAULT_RUNTIME,
        trust: ModelTrust | None = None,
    ) -> None:
        self.name, self.version, self.path = name, version, Path(path)
        self.keys, self.options, self.metrics = keys, options, metrics
        self.runtime = runtime
        self.trust = trust if trust is not None else trust_for(keys)
        self._openvino_models: dict[str, Any] = {}  # of the load under way
        self._conversion: ConversionProcess | None = None  # of the load under way

    def load(self) -> Servable:
        if self.metrics is None:
            return self._load()
        started = time.perf_counter()
        try:
            servable = self._load()
        except Exception as exc:
            code = exc.code.name if isinstance(exc, SealserveError) else "INTERNAL"
            self.metrics.record_load(
                self.name, self.version, time.perf_counter() - started, False, code
            )
            raise
        self.metrics.record_load(self.name, self.version, time.perf_counter() - started, True)
        # set after warmup, so that warmup runs are not counted as serving
        servable.run_observer = self.metrics.runtime_observer(self.name)
        return servable

    def _load(self) -> Servable:
        self._openvino_models = {}
        if self.runtime.platform == OPENVINO:
            # started first: its imports (seconds) overlap the key fetch and decryption
            self._conversion = ConversionProcess.start(f"model {self.name} version {self.version}")
        try:
            servable = self._load_keyed() if self.trust.keyed(self.name) else self._load_unkeyed()
        finally:
            if self._conversion is not None:
                self._conversion.close()  # it has answered and exited, unless the load failed
                self._conversion = None
        if self._openvino_models:
            from sealserve.serving.runtimes.openvino import release_memory

            # once the warm-up has run and the ram:// files are deleted: the load's
            # intermediate buffers and freed heap go back to the system
            release_memory(self._openvino_models)
            self._openvino_models = {}
        return servable

    def _load_keyed(self) -> Servable:
        """Only a tree authenticated by the model's key, bound here, within the pins."""
        where = f"model {self.name} version {self.version}"
        self._check_pin(self.trust.pin(self.name))
        if not is_protected_tree(self.path):
            raise PermissionDenied(
                f"{where} is refused: it is not a tree encrypted with the model's key (no "
                f"{MANIFEST_NAME}); model {self.name} has a key, so only trees that key "
                "authenticates are served (`sealserve encrypt` the whole SavedModel)"
            )
        key = self.keys.key_for(self.name)  # may ask a key broker: not decryption time
        pin = self._pin()
        self._check_pin(pin)
        started = time.perf_counter()
        # authenticates the manifest and every file's metadata, checks the listing, and
        # that the tree is bound to this very directory (not a copy of another version)
        tree = ProtectedTree(self.path, key, served_as=self.path)
        del key
        if pin.model_id is not None and tree.manifest.model_id != pin.model_id:
            raise PermissionDenied(
                f"{where} is refused: its model id {tree.manifest.model_id} is not the pinned "
                f"{pin.model_id}"
            )
        directories, decrypted = tree_files(tree)
        kept: dict[str, bytearray] = {}
        sizes = {entry.path: entry.size for entry in tree.manifest.files}
        files: Files = kept_along(decrypted, KEPT_FILES, sizes, kept)
        if self._conversion is not None:  # decrypted once, for both: it loads meanwhile
            from sealserve.serving.runtimes.openvino_worker import files_sent_along

            self._conversion.files_sent = True
            files = files_sent_along(self._conversion.write, self.options.tags, directories, files)
        try:
            if self.runtime.platform == OPENVINO:
                # this process reads only `kept`: the model goes to the conversion process,
                # and to a ram:// of this process only if a signature falls back to
                # TensorFlow (decrypted again then)
                for _, chunks in files:  # decrypts and verifies every file
                    for _ in chunks:
                        pass
                self._record_decryption(tree.manifest.total_size, started)
                return self._from_files(
                    kept, lambda: tree_in_memory(tree), lambda: tree_files(tree)
                )
            with files_in_memory(directories, files) as root:  # decrypts and verifies every file
                self._record_decryption(tree.manifest.total_size, started)
                return self._from_files(
                    kept, lambda: contextlib.nullcontext(root), lambda: tree_files(tree)
                )
        finally:
            wipe_all(kept)

    def _load_unkeyed(self) -> Servable:
        """A plain SavedModel (nothing to authenticate it with, by configuration)."""
        where = f"model {self.name} version {self.version}"
        files, _ = list_tree(self.path)
        if is_protected_tree(self.path) or any(_is_protected_file(self.path / f) for f in files):
            hint = (
                f"it is marked --insecure_plain_model {self.name}"
                if self.name in self.trust.plain_models
                else f"give --model_key {self.name}=PATH or a --key_broker"
            )
            raise FailedPrecondition(
                f"{where} is encrypted but model {self.name} has no key ({hint})"
            )
        if SAVED_MODEL_PB not in files and SAVED_MODEL_PBTXT not in files:
            raise NotFound(f"no SavedModel in {self.path}")
        if self.name in self.trust.plain_models:
            log.warning(
                "%s: served as a plain SavedModel, unauthenticated (--insecure_plain_model)",
                where,
            )
        return self._load_plain()

    def _pin(self) -> ModelPin:
        """The flags' pin, with the key provider's (the key broker's metadata) if it has one."""
        pin = self.trust.pin(self.name)
        pin_for = getattr(self.keys, "pin_for", None)
        if pin_for is not None:
            try:
                pin = pin.merged(pin_for(self.name))
            except InvalidArgument as exc:
                raise PermissionDenied(f"model {self.name}: {exc}") from None
        return pin

    def _check_pin(self, pin: ModelPin) -> None:
        if self.version < pin.min_version:
            raise PermissionDenied(
                f"model {self.name} version {self.version} is refused: below the pinned "
                f"minimum version {pin.min_version} (a rollback)"
            )

    def _record_decryption(self, plaintext_bytes: int, started: float) -> None:
        if self.metrics is not None:
            self.metrics.record_decryption(
                self.name, plaintext_bytes, time.perf_counter() - started
            )

    def _load_plain(self) -> Servable:
        kept: dict[str, bytes] = {}
        for relative in KEPT_FILES:
            path = self.path / relative
            if path.is_file() and not path.is_symlink():
                kept[relative] = path.read_bytes()  # (not secret: a plain model)
        root = str(self.path)
        return self._from_files(
            kept, lambda: contextlib.nullcontext(root), lambda: plain_files(self.path)
        )

    def _from_files(
        self,
        kept: Mapping[str, bytes | bytearray],
        root: SavedModelRoot,
        files: FileSource,
    ) -> Servable:
        """The servable of a SavedModel whose `saved_model.pb` (or `.pbtxt`) and warm-up
        file are `kept`, whose files are `files()`, and which TensorFlow reads at `root()`.
        Nothing here starts TensorFlow's runtime unless a signature runs on it."""
        meta_graph = meta_graph_of(kept, self.options.tags)
        signature_defs = dict(meta_graph.signature_def)
        warmup: list[WarmupRequest] = []
        if self.options.warmup and WARMUP_FILE in kept:
            warmup = warmup_requests(kept[WARMUP_FILE])
        labels: dict[str, str] = {}
        if self.runtime.platform == OPENVINO:
            runners, resources, labels = self._openvino_runners(root, signature_defs, warmup, files)
        else:
            with root() as where:
                runners, resources = self._runners(where, signature_defs)
        servable = Servable(
            self.name,
            self.version,
            runners,
            signature_defs,
            resources,
            bounded=bounded_signatures(meta_graph),
        )
        servable.runtime_labels = labels
        if warmup:
            replay_warmup(servable, warmup)
        return servable

    def _openvino_runners(
        self,
        root: SavedModelRoot,
        signature_defs: dict[str, Any],
        warmup: list[WarmupRequest],
        files: FileSource,
    ) -> tuple[dict[str, Runner], Any, dict[str, str]]:
        """OpenVINO runners, TensorFlow ones for the signatures it cannot convert, and the
        runtime label of each signature (metrics)."""
        from sealserve.serving.runtimes.openvino import convert_signatures

        keys = [key for key in signature_defs if key != INIT_OP_SIGNATURE]
        model = f"model {self.name} version {self.version}"
        gate_inputs = [(key, inputs) for key, inputs, _ in warmup]
        converted = convert_signatures(
            model, root, signature_defs, keys, self.options.tags, self.runtime, gate_inputs,
            files, self._conversion,
        )  # fmt: skip
        labels = dict.fromkeys(converted.runners, self.runtime.label)
        self._openvino_models = converted.compiled
        runners, resources = dict(converted.runners), [converted.compiled]
        if converted.unconverted:
            reasons: dict[str, list[str]] = {}
            for key, why in sorted(converted.unconverted.items()):
                reasons.setdefault(why, []).append(key)
            log.warning(
                "%s: OpenVINO cannot convert %s; %s on TensorFlow",
                model,
                "; ".join(f"signature {', '.join(keys)} ({why})" for why, keys in reasons.items()),
                "it runs" if len(converted.unconverted) == 1 else "they run",
            )
            left = {k: signature_defs[k] for k in converted.unconverted}
            with root() as where:  # TensorFlow starts here, if nothing needed it before
                tf_runners, tf_resources = self._runners(where, left)
            runners.update(tf_runners)
            resources.append(tf_resources)
        return runners, resources, labels

    def _runners(self, root: str, signature_defs: dict[str, Any]) -> tuple[dict[str, Runner], Any]:
        """One runner per runnable signature, and what they run on: a Session, as TF
        Serving; for a SavedModel the TF1 loader cannot load, its `tf.function`s."""
        tf = import_tensorflow()
        keys = [key for key in signature_defs if key != INIT_OP_SIGNATURE]
        loadable = (RuntimeError, ValueError, KeyError, OSError, tf.errors.OpError)
        try:
            bundle = SessionBundle(root, self.options.tags)
            return {key: bundle.runner(key) for key in keys}, bundle
        except loadable as exc:
            session_error = _brief(exc)
        try:
            loaded = tf.saved_model.load(root, tags=list(self.options.tags))
        except loadable as exc:
            raise InvalidArgument(f"TensorFlow cannot load the SavedModel: {_brief(exc)}") from None
        log.warning(
            "model %s version %d: runs through tf.function, slower than a Session (which "
            "failed: %s)",
            self.name,
            self.version,
            session_error,
        )
        functions = {key: fn for key, fn in loaded.signatures.items() if key in keys}
        return {
            key: GraphCall.build(fn) or _public_call(fn) for key, fn in functions.items()
        }, loaded


# One warm-up request: (signature key, inputs by alias, output filter)
WarmupRequest = tuple[str, dict[str, np.ndarray], tuple[str, ...]]


def meta_graph_of(files: Mapping[str, bytes | bytearray], tags: Sequence[str]) -> Any:
    """The MetaGraphDef `tags` of a SavedModel (its signatures and graph), from its
    `saved_model.pb` (or `saved_model.pbtxt`) in `files`: TensorFlow's protos only."""
    from google.protobuf import text_format
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    message = saved_model_pb2.SavedModel()
    try:
        if SAVED_MODEL_PB in files:
            message.ParseFromString(files[SAVED_MODEL_PB])
        elif SAVED_MODEL_PBTXT in files:
            text_format.Parse(bytes(files[SAVED_MODEL_PBTXT]).decode(), message)
        else:
            raise NotFound(f"the model has no {SAVED_MODEL_PB}")
    except (DecodeError, text_format.ParseError, UnicodeDecodeError):
        name = SAVED_MODEL_PB if SAVED_MODEL_PB in files else SAVED_MODEL_PBTXT
        raise InvalidArgument(f"{name} is not a SavedModel") from None
    wanted = set(tags)
    for meta_graph in message.meta_graphs:
        if set(meta_graph.meta_info_def.tags) == wanted:
            return meta_graph
    raise InvalidArgument(f"the SavedModel has no MetaGraph with tags {sorted(wanted)}")


def warmup_requests(data: bytes | bytearray) -> list[WarmupRequest]:
    """The predict requests of TF Serving's warm-up file (TFRecords of PredictionLogs), at
    most `MAX_WARMUP_RECORDS`, read as TF Serving reads them (a record that fails its
    checksum fails the load with DATA_LOSS), without TensorFlow's runtime."""
    from google.protobuf.message import DecodeError
    from tensorflow_serving.apis import prediction_log_pb2

    from sealserve.serving.tensor_proto import to_numpy

    requests: list[WarmupRequest] = []
    try:
        for count, record in enumerate(tfrecord.records(data)):
            if count == MAX_WARMUP_RECORDS:
                break
            try:
                entry = prediction_log_pb2.PredictionLog.FromString(record)
            except DecodeError:
                raise InvalidArgument(
                    f"{WARMUP_FILE}: record {count + 1} is not a PredictionLog"
                ) from None
            if entry.WhichOneof("log_type") != "predict_log":
                log.info("warmup: skipping a %s record", entry.WhichOneof("log_type"))
                continue
            request = entry.predict_log.request
            signature = request.model_spec.signature_name or "serving_default"
            inputs = {alias: to_numpy(proto) for alias, proto in request.inputs.items()}
            requests.append((signature, inputs, tuple(request.output_filter)))
    except tfrecord.CorruptRecord as exc:
        raise tfrecord.CorruptRecord(f"{WARMUP_FILE}: {exc}") from None
    return requests


def replay_warmup(servable: Servable, requests: list[WarmupRequest]) -> None:
    """Run the requests of TF Serving's warmup file (as `warmup_requests` read them) once
    each (predict only)."""
    count = 0
    for signature, inputs, output_filter in requests:
        try:
            servable.run(signature, inputs, output_filter)
        except SealserveError as exc:
            raise InvalidArgument(f"warmup request {count + 1} failed: {exc}") from None
        count += 1
    log.info(
        "model %s version %d: replayed %d warmup requests", servable.name, servable.version, count
    )


PLAIN_CHUNK = 1 << 20


def plain_files(root: Path) -> tuple[list[str], Any]:
    """A plain SavedModel's directories, and each file's bytes in chunks, read as they are
    consumed."""
    files, directories = list_tree(root)

    def chunks(relative: str) -> Any:
        with open(root / relative, "rb") as f:
            while chunk := f.read(PLAIN_CHUNK):
                yield chunk

    return directories, ((relative, chunks(relative)) for relative in files)


def _is_protected_file(path: Path) -> bool:
    with open(path, "rb") as f:
        magic = f.read(max(len(FILE_ID), len(GRAPHENE_FILE_ID)))
    return magic.startswith((FILE_ID, GRAPHENE_FILE_ID))


def trust_for(keys: object) -> ModelTrust:
    """The trust a key provider implies when the caller gives none: keys by name (local key
    files) key those models; any other provider (a key broker) keys every model."""
    names = getattr(keys, "names", None)
    if names is None:
        return ModelTrust(every_model_keyed=True)
    return ModelTrust(keyed_models=frozenset(names()))


def _public_call(function: Any) -> Runner:
    def run(inputs: Mapping[str, np.ndarray], quick: bool) -> dict[str, np.ndarray]:
        return {alias: tensor.numpy() for alias, tensor in function(**inputs).items()}

    return run


def _brief(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
