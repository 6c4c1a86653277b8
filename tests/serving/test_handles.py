"""Servable handles and unloading (TF Serving's ServableHandle): a version being unloaded
takes no new requests, keeps serving the ones that hold a handle, and reaches END only when
the last handle is released; then nothing of it is left: no servable, no Session, no batch
queue, no file in the in-memory file system."""

from __future__ import annotations

import gc
import shutil
import time
import weakref

import numpy as np
import pytest

from sealserve.errors import NotFound
from sealserve.model_tree import encrypt_tree
from sealserve.serving.batching import BatchingOptions, BatchScheduler
from sealserve.serving.dataplane import DataPlane, ModelSpec
from sealserve.serving.keys import StaticKeyProvider
from sealserve.serving.loader import LoadOptions
from sealserve.serving.manager import ManagerOptions, ModelManager, State, loader_factory
from sealserve.serving.model_config import ModelConfig
from sealserve.serving.tensorflow_runtime import import_tensorflow
from tests.serving.test_manager import FakeLoaders, add_version, manager_for, states

KEY = bytes(range(16))


def wait_for(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


@pytest.fixture
def base(tmp_path):
    (tmp_path / "m").mkdir()
    return tmp_path / "m"


# -- the handle contract, with stand-in servables ------------------------------------------


def test_a_replaced_version_ends_only_when_its_last_handle_is_released(base):
    add_version(base, 1)
    manager = manager_for(base, FakeLoaders())
    manager.start()
    held = manager.handle("m")
    old = held.servable
    add_version(base, 2)
    manager.reconcile()
    assert states(manager) == [(2, State.AVAILABLE), (1, State.UNLOADING)]
    with pytest.raises(NotFound):  # no new handles to a version being unloaded
        manager.handle("m", 1)
    with manager.handle("m") as new:
        assert new.servable.version == 2
    assert held.servable is old and not old.closed  # the request in flight still runs
    shared = held.share()  # e.g. its batch, still queued
    held.release()
    assert states(manager)[1] == (1, State.UNLOADING)
    shared.release()
    wait_for(lambda: states(manager)[1] == (1, State.END))
    assert old.closed
    held.release()  # releasing twice is harmless


def test_a_model_removed_by_reload_ends_when_its_requests_end(base):
    add_version(base, 1)
    manager = manager_for(base, FakeLoaders())
    manager.start()
    held = manager.handle("m")
    servable = held.servable
    manager.reload([])
    assert manager.model_names() == []
    assert not servable.closed
    held.release()
    wait_for(lambda: servable.closed)


def test_a_forgotten_handle_is_released_when_collected(base):
    add_version(base, 1)
    manager = manager_for(base, FakeLoaders())
    manager.start()
    servable_ref = weakref.ref(manager.handle("m").servable)  # the handle is dropped at once
    manager.reload([])
    gc.collect()
    wait_for(lambda: servable_ref() is None)


def test_stop_unloads_every_version(base):
    add_version(base, 1)
    manager = manager_for(base, FakeLoaders())
    manager.start()
    with manager.handle("m") as handle:
        servable = handle.servable
    manager.stop()
    assert servable.closed and states(manager) == [(1, State.END)]


# -- nothing of an unloaded version survives (real TensorFlow, encrypted trees) ---------------


def ram_files() -> list[str]:
    """Everything in TensorFlow's in-memory file system (directories and files)."""
    tf = import_tensorflow()
    return [
        f"{top}/{name}"
        for top, directories, files in tf.io.gfile.walk("ram://")
        for name in directories + files
    ]


def predict(dataplane: DataPlane, name: str) -> list[float]:
    with dataplane.resolve(ModelSpec(name)) as resolved:
        outputs = dataplane.predict_blocking(resolved, {"x": np.array([1.0, 2.0], np.float32)})
        return outputs["y"].tolist()


def version_refs(manager: ModelManager, name: str) -> list[weakref.ref]:
    """Weak references to a version's servable, its Session and its graph."""
    with manager.handle(name) as handle:
        servable = handle.servable
        bundle = servable._resources
        return [weakref.ref(servable), weakref.ref(bundle), weakref.ref(bundle._session)]


def test_nothing_of_an_unloaded_version_survives(tmp_path, half_plus_two):
    base = tmp_path / "secret"
    encrypt_tree(half_plus_two, str(base / "1"), KEY)
    batcher = BatchScheduler(BatchingOptions(max_batch_size=4, num_batch_threads=1))
    manager = ModelManager(
        [ModelConfig("secret", str(base))],
        loader_factory(StaticKeyProvider({"secret": KEY}), LoadOptions()),
        ManagerOptions(poll_seconds=0, max_load_retries=0),
    )
    dataplane = DataPlane(manager, threads=1, batcher=batcher)
    try:
        manager.start()
        assert predict(dataplane, "secret") == [2.5, 3.0]  # through a batch queue
        first = version_refs(manager, "secret")
        assert ram_files() == []  # decrypted files leave ram:// once loaded

        # a new version replaces it
        encrypt_tree(half_plus_two, str(base / "2"), KEY)
        manager.reconcile()
        assert predict(dataplane, "secret") == [2.5, 3.0]
        gc.collect()
        assert [ref() for ref in first] == [None, None, None]
        assert [s.version for s in manager.status("secret")] == [2, 1]
        assert manager.status("secret")[1].state == State.END
        second = version_refs(manager, "secret")

        # the model is removed from the configuration
        manager.reload([])
        gc.collect()
        assert [ref() for ref in second] == [None, None, None]
        assert len(batcher._queues) == 0
        assert ram_files() == []
    finally:
        manager.stop()
        dataplane.close()


def test_a_plain_model_replaced_while_a_request_holds_it(tmp_path, half_plus_two):
    base = tmp_path / "plain"
    shutil.copytree(half_plus_two, base / "1")
    manager = ModelManager(
        [ModelConfig("plain", str(base))],
        loader_factory(StaticKeyProvider({}), LoadOptions()),
        ManagerOptions(poll_seconds=0, max_load_retries=0),
    )
    dataplane = DataPlane(manager, threads=1)
    try:
        manager.start()
        held = manager.handle("plain")
        shutil.copytree(half_plus_two, base / "2")
        manager.reconcile()
        # the held version still answers, though a newer one serves everyone else
        resolved = DataPlane.resolve_signature(held, "serving_default")
        outputs = dataplane.predict_blocking(resolved, {"x": np.array([4.0], np.float32)})
        assert outputs["y"].tolist() == [4.0]
        refs = [weakref.ref(held.servable)]
        held.release()
        wait_for(lambda: manager.status("plain")[1].state == State.END)
        gc.collect()
        assert refs[0]() is None
    finally:
        manager.stop()
        dataplane.close()
