"""The model manager: which versions are loaded, their states, and handles to them.

TF Serving's ideas, kept small: a source (the version directories under each base path)
proposes versions, the version policy picks the aspired ones, loaders load them, and the
manager swaps them in **availability-preserving** order — new versions are loaded before old
ones are unloaded, so a version that fails to load leaves the old one serving. States follow
`ModelVersionStatus.State` (START, LOADING, AVAILABLE, UNLOADING, END); a failed version ends
in END with its error, which `status()` reports. Transient failures (e.g. a key broker that
cannot be reached) are retried; permanent ones (wrong key, tampered tree) are not.

Request paths take a `ServableHandle` (`handle()`) and hold it for the whole request (TF
Serving's ServableHandle): a reference-counted lease on one AVAILABLE version. Unloading a
version first stops new handles (UNLOADING), then, once the last handle is released, closes
the servable (its TensorFlow Session and runners; batch queues are keyed weakly by the
servable and go with it), drops the manager's reference and only then reports END. Nothing
else may keep a servable: request paths never cache one.

Listeners (`add_listener`) are called, from whichever thread made the change and without the
manager's lock held, whenever availability may have changed: a version loaded, failed,
unloaded, or the model list replaced; they must return quickly (health checks re-read
`ready()` on their own loop). All public methods are thread safe.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sealserve.errors import (
    Code,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    SealserveError,
)
from sealserve.serving.loader import LoadOptions, VersionLoader
from sealserve.serving.model_config import ModelConfig, ModelTrust, check_no_platform_changes
from sealserve.serving.runtimes import DEFAULT_RUNTIME, RuntimeSpec
from sealserve.serving.servable import Servable
from sealserve.serving.source import Poller, fingerprint, version_dirs, version_path

if TYPE_CHECKING:
    from sealserve.serving.metrics import Metrics

log = logging.getLogger(__name__)

# errors that another attempt cannot fix
PERMANENT = {
    Code.INVALID_ARGUMENT,
    Code.NOT_FOUND,
    Code.PERMISSION_DENIED,
    Code.DATA_LOSS,
    Code.FAILED_PRECONDITION,
    Code.UNAUTHENTICATED,
    Code.UNIMPLEMENTED,
}


class State(enum.Enum):
    START = 10
    LOADING = 20
    AVAILABLE = 30
    UNLOADING = 40
    END = 50


@dataclass
class VersionStatus:
    version: int
    state: State
    error: SealserveError | None = None


@dataclass
class _Version:
    status: VersionStatus
    servable: Servable | None = None
    fingerprint: tuple[float, int] | None = None  # of its directory when the load began
    handles: int = 0  # handles not yet released (guarded by the manager's lock)
    name: str = ""  # the model's
    #: why it is being unloaded, if not by the configuration (e.g. its key was revoked);
    #: reported with END, and such a version is not loaded again
    end_error: SealserveError | None = None

    @property
    def serving(self) -> bool:
        """New handles may be taken (AVAILABLE, not yet unloading)."""
        return self.servable is not None and self.status.state == State.AVAILABLE


@dataclass
class _Model:
    config: ModelConfig
    versions: dict[int, _Version] = field(default_factory=dict)

    def available(self) -> list[int]:
        return sorted((v for v, e in self.versions.items() if e.serving), reverse=True)


class ServableHandle:
    """A lease on one loaded version, held for one whole request (a context manager).

    While any handle to a version is unreleased, the version's servable stays loaded, even
    if the version is being unloaded. `share()` takes another lease on the same version for
    work that may outlive the request's own (a batch run, a thread). Release each handle
    exactly once; a handle dropped unreleased is released when it is garbage collected.
    Thread safe."""

    __slots__ = ("_manager", "_entry", "_servable", "__weakref__")

    def __init__(self, manager: ModelManager, entry: _Version, servable: Servable) -> None:
        self._manager: ModelManager | None = manager
        self._entry = entry
        self._servable: Servable | None = servable

    @property
    def servable(self) -> Servable:
        servable = self._servable
        if servable is None:
            raise SealserveError("servable handle used after release", code=Code.INTERNAL)
        return servable

    def share(self) -> ServableHandle:
        """Another handle to the same version (even while it is unloading)."""
        manager = self._manager
        if manager is None:
            raise SealserveError("servable handle used after release", code=Code.INTERNAL)
        return manager._share(self._entry, self.servable)

    def release(self) -> None:
        manager, self._manager, self._servable = self._manager, None, None
        if manager is not None:
            manager._release(self._entry)

    def __enter__(self) -> ServableHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:  # a request path that forgot to release must not pin a model
        if getattr(self, "_manager", None) is not None:
            self.release()


@dataclass(frozen=True)
class ManagerOptions:
    load: LoadOptions = LoadOptions()
    poll_seconds: float = 1.0  # 0: scan once; < 0: never scan after start-up
    max_load_retries: int = 5
    load_retry_interval_seconds: float = 60.0
    load_threads: int = 2
    # a reload may point a version label at a version not (yet) available, unless it moves
    # an existing label (TF Serving's --allow_version_labels_for_unavailable_models)
    allow_version_labels_for_unavailable_models: bool = False


# (model name, version, its directory, the model's runtime) -> a loader
LoaderFactory = Callable[[str, int, Path, RuntimeSpec], VersionLoader]


class ModelManager:
    def __init__(
        self,
        configs: list[ModelConfig],
        loader_factory: LoaderFactory,
        options: ManagerOptions = ManagerOptions(),
    ) -> None:
        self._lock = threading.RLock()
        self._reconcile_lock = threading.Lock()  # one reconciliation at a time
        self._models: dict[str, _Model] = {c.name: _Model(c) for c in configs}
        self._new_loader = loader_factory
        self.options = options
        self._stopped = threading.Event()
        self._poller: Poller | None = None
        self._load_slots = threading.BoundedSemaphore(max(1, options.load_threads))
        self._listeners: list[Callable[[], None]] = []
        self._finishing: list[threading.Thread] = []  # unloads finished by a last release
        # during `start(report_unavailable=False)`: the failures held back until the initial
        # load ends, so that each is said once (by the caller, for a model left unavailable)
        self._held_failures: list[tuple[str, int, SealserveError]] | None = None

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call `listener()` whenever the availability of versions may have changed."""
        self._listeners.append(listener)

    def _notify(self) -> None:
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:  # a listener must not break loading
                log.exception("model availability listener failed")

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, report_unavailable: bool = True) -> None:
        """Load every model's aspired versions (blocking), then poll in the background.

        `report_unavailable=False`: the caller reports the models left with no available
        version (`unavailable_reasons()`), so their failed loads are not also logged here;
        a failed version of a model that another version serves is logged as usual."""
        for model in self._snapshot():
            if not Path(model.config.base_path).is_dir():
                raise NotFound(
                    f"model {model.config.name}: base path {model.config.base_path} not found"
                )
        if not report_unavailable:
            self._held_failures = []
        try:
            self.reconcile()
        finally:
            from sealserve.serving.runtimes.conversion import discard_prestarted

            discard_prestarted()  # the initial loads are done: a process none took ends
            with self._lock:
                held, self._held_failures = self._held_failures or [], None
                said_by_caller = {n for n, m in self._models.items() if not m.available()}
            for name, version, error in held:
                if name not in said_by_caller:
                    _log_failure(name, version, error)
        if self.options.poll_seconds > 0:
            self._poller = Poller("sealserve-poll", self.options.poll_seconds, self._poll).start()

    def stop(self) -> None:
        """Stop polling and loading, and unload every version (each as its last handle is
        released; the caller has drained requests first). Loads still running (a key broker
        that does not answer) are left behind on their daemon threads: they give up at
        their next step, and nothing they load is kept."""
        self._stopped.set()
        if self._poller is not None:
            self._poller.stop()
        from sealserve.serving.runtimes.conversion import stop_conversions

        stop_conversions()  # a load converting a model for OpenVINO ends now
        with self._lock:
            ends = [
                self._begin_unload(model.config.name, version, entry)
                for model in self._models.values()
                for version, entry in model.versions.items()
                if entry.serving
            ]
        self._finish_unloads(ends)
        for thread in list(self._finishing):
            thread.join(timeout=10)

    # -- reconciliation ------------------------------------------------------------------
    #
    # The reconcile lock covers only quick bookkeeping (listing base paths, choosing versions,
    # starting loads, beginning unloads): never a load or its retries. Loads run on daemon
    # threads (at most `load_threads` at once); each one, when it ends, reconciles its model
    # again, which unloads the versions it replaces (availability-preserving order). Callers
    # that must see a result (start-up, a reload RPC) wait for the loads they started, with
    # no lock held, so a reload never waits behind another model's retrying load.

    def reconcile(self) -> None:
        """Bring every model to its aspired versions: load new ones (waiting for them),
        then unload old ones."""
        _wait(self._reconcile_nowait())

    def _poll(self) -> None:
        self._reconcile_nowait()  # loads run on; the next poll sees how they ended

    def _reconcile_nowait(self) -> list[Future[None]]:
        """Start what needs starting; the futures of the loads started."""
        with self._reconcile_lock:
            return self._reconcile_locked()

    def reload(self, configs: list[ModelConfig], wait: bool = True) -> None:
        """Replace the model list (TF Serving's config reload): new models load, models left
        out unload, the others keep serving under their new policy and labels. Nothing
        changes if a new model's base path does not exist, if a model would change its
        platform (`InvalidArgument`, as TF Serving), or if a version label would point at a
        version that is not available (`FailedPrecondition`: `_check_version_labels`). With
        `wait`, returns once the loads this reload started have ended (as TF Serving's
        ReloadConfig does), not once other loads still in progress have."""
        for config in configs:
            if not Path(config.base_path).is_dir():
                raise NotFound(f"model {config.name}: base path {config.base_path} not found")
        with self._reconcile_lock:
            with self._lock:
                # against the config in force, under the lock a concurrent reload also takes
                check_no_platform_changes((m.config for m in self._models.values()), configs)
                self._check_version_labels(configs)
                wanted = {c.name: c for c in configs}
                ends = []
                for name in [n for n in self._models if n not in wanted]:
                    for version, entry in self._models.pop(name).versions.items():
                        if entry.serving:
                            ends.append(self._begin_unload(name, version, entry))
                    log.info("model %s removed from the configuration", name)
                for name, config in wanted.items():
                    if name in self._models:
                        self._models[name].config = config
                    else:
                        self._models[name] = _Model(config)
            self._finish_unloads(ends)
            self._notify()  # dropped models, and new ones not loaded yet
            started = self._reconcile_locked()
        if wait:
            _wait(started)

    def _check_version_labels(self, configs: list[ModelConfig]) -> None:  # under self._lock
        """TF Serving's rule for the labels of a reloaded config (ServerCore's
        UpdateModelVersionLabelMap): a label may point only at a version AVAILABLE now, so
        that requests for it never meet a version still loading; with
        `allow_version_labels_for_unavailable_models`, at any version, unless the label
        already points at another one (a label moves only to an available version)."""
        for config in configs:
            model = self._models.get(config.name)
            for label, version in config.version_labels.items():
                entry = model.versions.get(version) if model else None
                if entry is not None and entry.serving:
                    continue
                current = model.config.version_labels.get(label) if model else None
                if self.options.allow_version_labels_for_unavailable_models and current in (
                    None,
                    version,
                ):
                    continue
                raise FailedPrecondition(
                    f"Request to assign label to version {version} of model {config.name}, "
                    "which is not currently available for inference"
                )

    def _reconcile_locked(self) -> list[Future[None]]:
        models = self._snapshot()
        started = []
        ends = []
        for model in models:
            for version in sorted(self._to_load(model)):
                started.append(self._start_load(model, version))
            ends += self._unload_and_forget(model)
        self._finish_unloads(ends)
        self._notify()
        return started

    def _aspired(self, model: _Model) -> set[int]:
        return model.config.version_policy.aspired(version_dirs(model.config.base_path))

    def _to_load(self, model: _Model) -> set[int]:
        """Aspired versions never tried, or unloaded earlier (failed ones wait for a change)."""
        with self._lock:
            return {
                v
                for v in self._aspired(model)
                if v not in model.versions
                or (
                    model.versions[v].status.state == State.END
                    and model.versions[v].status.error is None
                )
            }

    def _start_load(self, model: _Model, version: int) -> Future[None]:
        """Register the version (START) and load it on a daemon thread of its own, at most
        `load_threads` loading at once (daemon: a load stuck on an unresponsive key broker
        must not keep a stopping server alive)."""
        name = model.config.name
        path = version_path(model.config.base_path, version)
        entry = _Version(
            VersionStatus(version, State.START), fingerprint=fingerprint(path), name=name
        )
        with self._lock:
            model.versions[version] = entry
        done: Future[None] = Future()

        def run() -> None:
            try:
                with self._load_slots:
                    if not self._stopped.is_set():
                        self._load(model, version, entry)
                if not self._stopped.is_set():
                    self._reconcile_model(model)
            except Exception:  # never lose a load's end: its waiters must return
                log.exception("loading model %s version %d", name, version)
            finally:
                done.set_result(None)

        threading.Thread(target=run, name=f"sealserve-load-{name}-{version}", daemon=True).start()
        return done

    def _reconcile_model(self, model: _Model) -> None:
        """After a load: unload what the loaded version replaces."""
        with self._reconcile_lock:
            ends = self._unload_and_forget(model)
        self._finish_unloads(ends)
        self._notify()

    def _load(self, model: _Model, version: int, entry: _Version) -> None:
        name = model.config.name
        path = version_path(model.config.base_path, version)
        attempts = 1 + max(0, self.options.max_load_retries)
        error = SealserveError("the server is stopping", code=Code.CANCELLED)
        for attempt in range(1, attempts + 1):
            with self._lock:
                entry.status = VersionStatus(version, State.LOADING)
            if attempt == 1:
                log.info("model %s version %d loading", name, version)
            started = time.monotonic()
            try:
                servable = self._new_loader(name, version, path, model.config.runtime).load()
            except SealserveError as exc:
                error = exc
            except Exception as exc:  # a bug or an unexpected TensorFlow failure
                log.exception("loading model %s version %d", name, version)
                error = SealserveError(f"{type(exc).__name__}: {exc}", code=Code.INTERNAL)
            else:
                with self._lock:
                    wanted = (
                        not self._stopped.is_set()
                        and self._models.get(name) is model
                        and model.versions.get(version) is entry
                        and entry.end_error is None  # not revoked while it loaded
                    )
                    entry.servable = servable
                    entry.status = VersionStatus(version, State.AVAILABLE)
                    unload = None if wanted else self._begin_unload(name, version, entry)
                del servable
                if not wanted:  # removed (or the server stopped) while it loaded
                    self._finish_unloads([unload])
                    return
                self._notify()
                log.info(
                    "model %s version %d is available (loaded in %.2f s)",
                    name,
                    version,
                    time.monotonic() - started,
                )
                return
            permanent = error.code in PERMANENT
            if permanent or attempt == attempts or self._stopped.is_set():
                break
            log.warning(
                "model %s version %d: load attempt %d failed: %s; retrying in %g s",
                name,
                version,
                attempt,
                error,
                self.options.load_retry_interval_seconds,
            )
            if self._stopped.wait(self.options.load_retry_interval_seconds):
                break
        with self._lock:
            entry.status = VersionStatus(version, State.END, error)
            held = None if self._stopped.is_set() else self._held_failures
            if held is not None:
                held.append((name, version, error))
        if held is None:
            _log_failure(name, version, error)

    def _unload_and_forget(self, model: _Model) -> list[_Unload]:
        """Begin unloading versions no longer aspired (once an aspired one serves), and
        forget ended versions that left the disk or changed after failing. Returns the
        unloads that no handle holds up, for `_finish_unloads` (outside the lock)."""
        aspired = self._aspired(model)
        ends = []
        with self._lock:
            serving_aspired = any(model.versions[v].serving for v in aspired if v in model.versions)
            for version, entry in list(model.versions.items()):
                if version in aspired:
                    continue
                if entry.serving and (serving_aspired or not aspired):
                    ends.append(self._begin_unload(model.config.name, version, entry))
            for version, entry in list(model.versions.items()):
                if entry.servable is None and entry.status.state == State.END:
                    # Gone from disk, or failed and changed since (a copy that was still in
                    # progress, a fixed file): forget it, so the next scan loads it afresh.
                    path = version_path(model.config.base_path, version)
                    if not path.is_dir() or (
                        entry.status.error is not None and fingerprint(path) != entry.fingerprint
                    ):
                        del model.versions[version]
        return [end for end in ends if end is not None]

    # -- unloading -----------------------------------------------------------------------

    def _begin_unload(self, name: str, version: int, entry: _Version) -> _Unload | None:
        """UNLOADING: no new handles. Returns the unload to finish now if no handle is out;
        otherwise the last `release` finishes it (caller holds the lock)."""
        entry.status = VersionStatus(version, State.UNLOADING)
        if entry.handles:
            log.info(
                "model %s version %d unloading once %d request(s) finish",
                name,
                version,
                entry.handles,
            )
            return None
        return self._take_for_unload(entry)

    def _take_for_unload(self, entry: _Version) -> _Unload:
        servable, entry.servable = entry.servable, None
        return _Unload(entry.name, entry.status.version, entry, servable)

    def _finish_unloads(self, unloads: Sequence[_Unload | None]) -> None:
        """Close each servable (its Session, runners and queues), then report END."""
        for unload in unloads:
            if unload is None:
                continue
            try:
                if unload.servable is not None:
                    unload.servable.close()
            except Exception:  # the version ends anyway: nothing may keep it
                log.exception("closing model %s version %d", unload.name, unload.version)
            unload.servable = None
            error = unload.entry.end_error
            with self._lock:
                unload.entry.status = VersionStatus(unload.version, State.END, error)
            if error is None:
                log.info("model %s version %d unloaded", unload.name, unload.version)
            else:
                log.warning("model %s version %d unloaded: %s", unload.name, unload.version, error)
        if any(u is not None for u in unloads):
            self._notify()

    def _share(self, entry: _Version, servable: Servable) -> ServableHandle:
        with self._lock:
            entry.handles += 1
        return ServableHandle(self, entry, servable)

    def _release(self, entry: _Version) -> None:
        with self._lock:
            entry.handles -= 1
            if entry.handles or entry.status.state != State.UNLOADING or entry.servable is None:
                return
            unload = self._take_for_unload(entry)
        # The last request of an unloading version: close it off the request's thread (a
        # Session holding a large model takes a while to free, and this may be the loop).
        thread = threading.Thread(
            target=self._finish_unloads, args=([unload],), name="sealserve-unload", daemon=True
        )
        with self._lock:
            self._finishing = [t for t in self._finishing if t.is_alive()] + [thread]
        thread.start()

    def revoke(self, name: str, reason: str) -> None:
        """Take every version of model `name` out of service for `reason` (its key was
        revoked, or its lease ended): each ends, with that reason, once its last request
        finishes, its decrypted state dropped as for any unload; none is loaded again from
        the same directory (a new version needs its key from the KBS afresh)."""
        error = PermissionDenied(reason)
        with self._lock:
            model = self._models.get(name)
            versions = list(model.versions.items()) if model is not None else []
            ends = []
            for version, entry in versions:
                if entry.status.state in (State.END, State.UNLOADING):
                    continue
                entry.end_error = error
                if entry.serving:
                    ends.append(self._begin_unload(name, version, entry))
        log.warning("model %s: %s", name, reason)
        self._finish_unloads(ends)
        self._notify()

    # -- queries -------------------------------------------------------------------------

    def handle(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> ServableHandle:
        """A handle to an AVAILABLE version: the given one, the labelled one, or the latest.
        Hold it for the whole request and release it (`with manager.handle(...) as h:`)."""
        with self._lock:
            model = self._models.get(name)
            if label is not None:
                if model is None or label not in model.config.version_labels:
                    raise InvalidArgument(f"Unrecognized servable version label: {label}")
                version = model.config.version_labels[label]
            if version is None:
                available = model.available() if model else []
                if not available:
                    raise NotFound(f"Servable not found for request: Latest({name})")
                version = available[0]
            entry = model.versions.get(version) if model else None
            if entry is None or not entry.serving or entry.servable is None:
                raise NotFound(f"Servable not found for request: Specific({name}, {version})")
            entry.handles += 1
            return ServableHandle(self, entry, entry.servable)

    def status(self, name: str, version: int | None = None) -> list[VersionStatus]:
        """Version states, highest version first (GetModelStatus)."""
        with self._lock:
            model = self._models.get(name)
            if model is None or not model.versions:
                raise NotFound(f"Could not find any versions of model {name}")
            if version is not None:
                if version not in model.versions:
                    raise NotFound(f"Could not find version {version} of model {name}")
                return [model.versions[version].status]
            return [model.versions[v].status for v in sorted(model.versions, reverse=True)]

    def model_names(self) -> list[str]:
        with self._lock:
            return sorted(self._models)

    def ready(self) -> bool:
        """Every configured model has at least one available version (and there is one
        model at least: a server with nothing to serve should get no traffic)."""
        with self._lock:
            return bool(self._models) and all(m.available() for m in self._models.values())

    def not_ready(self) -> dict[str, list[VersionStatus]]:
        """The models with no available version, each with its versions' states (for a
        readiness answer that says why)."""
        with self._lock:
            return {
                name: [model.versions[v].status for v in sorted(model.versions, reverse=True)]
                for name, model in sorted(self._models.items())
                if not model.available()
            }

    def unavailable_reasons(self) -> dict[str, str]:
        """Why each model with no available version has none, in one line per model (the
        start-up check: TF Serving's ServerCore fails its start on these)."""
        with self._lock:
            reasons = {}
            for name, model in sorted(self._models.items()):
                if model.available():
                    continue
                failed = [
                    f"version {v} {_failure(model.versions[v].status)}"
                    for v in sorted(model.versions, reverse=True)
                ]
                reasons[name] = "; ".join(failed) or (
                    f"no version directory under {model.config.base_path}"
                )
            return reasons

    def _snapshot(self) -> list[_Model]:
        with self._lock:
            return list(self._models.values())


def _log_failure(name: str, version: int, error: SealserveError) -> None:
    log.error("model %s version %d failed to load: %s", name, version, error)


def _failure(status: VersionStatus) -> str:
    if status.error is not None:
        return f"failed to load: {status.error}"
    return f"is {status.state.name}"


def _wait(futures: list[Future[None]]) -> None:
    for future in futures:
        future.result()


@dataclass
class _Unload:
    """A version taken out of service, to be closed and reported END."""

    name: str
    version: int
    entry: _Version
    servable: Servable | None


def loader_factory(
    keys: object,
    options: LoadOptions,
    metrics: Metrics | None = None,
    trust: ModelTrust | None = None,
) -> LoaderFactory:
    def new_loader(
        name: str, version: int, path: Path, runtime: RuntimeSpec = DEFAULT_RUNTIME
    ) -> VersionLoader:
        return VersionLoader(
            name,
            version,
            path,
            keys,  # type: ignore[arg-type]
            options,
            metrics,
            runtime,
            trust,
        )

    return new_loader
