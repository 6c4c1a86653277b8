"""The manager's lifecycle rules with a stand-in loader: policies, availability-preserving
swaps, failures, retries, labels. (The real loader is exercised by the server tests.)"""

from __future__ import annotations

import pytest

from sealserve.errors import Code, DataLoss, InvalidArgument, NotFound, SealserveError
from sealserve.serving.manager import ManagerOptions, ModelManager, State
from sealserve.serving.model_config import ModelConfig
from sealserve.serving.version_policy import VersionPolicy


@pytest.mark.parametrize(
    ("policy", "available", "aspired"),
    [
        (VersionPolicy(), [1, 2, 3], {3}),
        (VersionPolicy(num_versions=2), [1, 2, 3], {2, 3}),
        (VersionPolicy(num_versions=5), [1, 3], {1, 3}),
        (VersionPolicy(kind="all"), [1, 2, 3], {1, 2, 3}),
        (VersionPolicy(kind="specific", versions=frozenset({2, 9})), [1, 2, 3], {2}),
        (VersionPolicy(), [], set()),
    ],
)
def test_version_policies(policy, available, aspired):
    assert policy.aspired(available) == aspired


class FakeServable:
    def __init__(self, name, version):
        self.name, self.version = name, version
        self.closed = False

    def close(self):
        self.closed = True


def serving_version(manager, *args, **kwargs):
    with manager.handle(*args, **kwargs) as handle:
        return handle.servable.version


class FakeLoaders:
    """Loads succeed unless a failure is queued for (name, version)."""

    def __init__(self):
        self.failures: dict[tuple[str, int], list[SealserveError]] = {}
        self.calls: list[tuple[str, int]] = []

    def __call__(self, name, version, path, runtime=None):
        loaders = self

        class Loader:
            def load(self):
                loaders.calls.append((name, version))
                queued = loaders.failures.get((name, version))
                if queued:
                    raise queued.pop(0)
                return FakeServable(name, version)

        return Loader()


@pytest.fixture
def base(tmp_path):
    (tmp_path / "m").mkdir()
    return tmp_path / "m"


def add_version(base, version):
    (base / str(version)).mkdir()


def manager_for(base, loaders, policy=None, labels=None, **options):
    config = ModelConfig("m", str(base), policy or VersionPolicy(), labels or {})
    settings = dict(poll_seconds=0, max_load_retries=0, load_retry_interval_seconds=0)
    settings.update(options)
    return ModelManager([config], loaders, ManagerOptions(**settings))


def states(manager):
    return [(s.version, s.state) for s in manager.status("m")]


def test_latest_version_loads_and_replaces_the_old_one(base):
    loaders = FakeLoaders()
    add_version(base, 1)
    manager = manager_for(base, loaders)
    manager.start()
    assert serving_version(manager, "m") == 1
    add_version(base, 2)
    manager.reconcile()
    assert serving_version(manager, "m") == 2
    assert states(manager) == [(2, State.AVAILABLE), (1, State.END)]
    with pytest.raises(NotFound, match=r"Specific\(m, 1\)"):
        manager.handle("m", 1)


def test_a_failed_new_version_leaves_the_old_one_serving(base):
    loaders = FakeLoaders()
    add_version(base, 1)
    manager = manager_for(base, loaders)
    manager.start()
    add_version(base, 2)
    loaders.failures[("m", 2)] = [DataLoss("authentication failed for saved_model.pb")]
    manager.reconcile()
    assert serving_version(manager, "m") == 1
    status = manager.status("m")
    assert (status[0].version, status[0].state) == (2, State.END)
    assert "authentication failed" in str(status[0].error)
    # not retried while nothing changes
    manager.reconcile()
    assert loaders.calls.count(("m", 2)) == 1


def test_a_failed_version_is_retried_once_its_directory_changes(base):
    loaders = FakeLoaders()
    add_version(base, 1)
    loaders.failures[("m", 1)] = [NotFound("no SavedModel in m/1")]
    manager = manager_for(base, loaders)
    manager.start()
    assert states(manager) == [(1, State.END)]
    (base / "1" / "saved_model.pb").write_bytes(b"now complete")
    manager.reconcile()  # forgets the failure
    manager.reconcile()  # loads again
    assert serving_version(manager, "m") == 1


def test_transient_failures_are_retried_permanent_ones_are_not(base):
    loaders = FakeLoaders()
    add_version(base, 1)
    loaders.failures[("m", 1)] = [SealserveError("key broker unreachable", code=Code.UNAVAILABLE)]
    manager = manager_for(base, loaders, max_load_retries=2)
    manager.start()
    assert serving_version(manager, "m") == 1
    assert loaders.calls == [("m", 1), ("m", 1)]

    add_version(base, 2)
    loaders.failures[("m", 2)] = [InvalidArgument("bad model")] * 3
    manager.reconcile()
    assert loaders.calls.count(("m", 2)) == 1


def test_all_and_specific_policies_and_labels(base):
    loaders = FakeLoaders()
    for version in (1, 2, 3):
        add_version(base, version)
    manager = manager_for(
        base,
        loaders,
        VersionPolicy(kind="specific", versions=frozenset({1, 3})),
        labels={"stable": 1, "canary": 3, "gone": 2},
    )
    manager.start()
    assert serving_version(manager, "m") == 3
    assert serving_version(manager, "m", label="stable") == 1
    with pytest.raises(NotFound):
        manager.handle("m", label="gone")
    with pytest.raises(InvalidArgument, match="Unrecognized servable version label: x"):
        manager.handle("m", label="x")
    assert [s.version for s in manager.status("m")] == [3, 1]


def test_a_deleted_version_disappears_and_a_reappearing_one_loads_again(base):
    loaders = FakeLoaders()
    add_version(base, 1)
    add_version(base, 2)
    manager = manager_for(base, loaders, VersionPolicy(kind="all"))
    manager.start()
    (base / "2").rmdir()
    manager.reconcile()
    manager.reconcile()
    assert [s.version for s in manager.status("m")] == [1]
    add_version(base, 2)
    manager.reconcile()
    assert serving_version(manager, "m", 2) == 2


def test_unknown_models_and_versions(base):
    manager = manager_for(base, FakeLoaders())
    manager.start()
    with pytest.raises(NotFound, match=r"Latest\(m\)"):
        manager.handle("m")
    with pytest.raises(NotFound, match="Could not find any versions of model x"):
        manager.status("x")


def test_missing_base_path_fails_at_start(tmp_path):
    manager = manager_for(tmp_path / "missing", FakeLoaders())
    with pytest.raises(NotFound, match="base path"):
        manager.start()


def test_non_numeric_directories_are_ignored(base):
    loaders = FakeLoaders()
    add_version(base, 4)
    (base / "tmp-upload").mkdir()
    (base / "5.bak").mkdir()
    manager = manager_for(base, loaders)
    manager.start()
    assert loaders.calls == [("m", 4)]


def test_a_reload_does_not_wait_behind_another_models_load(tmp_path):
    """A load that never ends (a key broker that does not answer, or retries) holds no lock:
    a reload returns once its own new model has loaded, and polls go on."""
    import threading

    for name in ("a", "slow", "b"):
        (tmp_path / name).mkdir()
        add_version(tmp_path / name, 1)
    answer = threading.Event()

    class SlowLoaders(FakeLoaders):
        def __call__(self, name, version, path, *runtime):
            loader = super().__call__(name, version, path, *runtime)
            if name != "slow":
                return loader

            class Waiting:
                def load(self):
                    answer.wait()
                    return loader.load()

            return Waiting()

    def config(name):
        return ModelConfig(name, str(tmp_path / name))

    options = ManagerOptions(poll_seconds=0, max_load_retries=0, load_retry_interval_seconds=0)
    manager = ModelManager([config("a")], SlowLoaders(), options)
    manager.start()
    manager.reload([config("a"), config("slow")], wait=False)
    assert [s.state for s in manager.status("slow")] in ([State.START], [State.LOADING])

    reloaded = threading.Thread(
        target=manager.reload, args=([config("a"), config("slow"), config("b")],)
    )
    reloaded.start()
    reloaded.join(60)  # only a guard: without the fix it waits for `answer` forever
    try:
        assert not reloaded.is_alive()
        assert serving_version(manager, "b") == 1
        manager.reconcile()  # a poll, too, goes on
        assert [s.state for s in manager.status("slow")] == [State.LOADING]
    finally:
        answer.set()
    reloaded.join()
    manager.reconcile()
    for _ in range(1000):
        if manager.status("slow")[0].state == State.AVAILABLE:
            break
        threading.Event().wait(0.01)
    assert serving_version(manager, "slow") == 1
    manager.stop()


def reload_with_platform(base, model_platform, **changes):
    """The model's config as a reload names it, with `model_platform` spelled as given."""
    from sealserve.serving.runtimes import parse_runtime

    runtime = parse_runtime(model_platform, "reload")
    return ModelConfig("m", str(base), runtime=runtime, platform_text=model_platform, **changes)


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("", "openvino"),
        ("tensorflow", "openvino:bf16"),
        ("openvino", "tensorflow"),
        ("openvino", "openvino:bf16"),
        ("openvino", "openvino:strict"),
        ("openvino", "openvino:max_relative_error=0.5"),
    ],
)
def test_a_reload_may_not_change_a_models_platform(base, before, after):
    """TF Serving's ServerCore refuses it; the loaded versions would go on running on the old
    runtime while the config claims the new one."""
    loaders = FakeLoaders()
    add_version(base, 1)
    manager = ModelManager(
        [reload_with_platform(base, before)], loaders, ManagerOptions(poll_seconds=0)
    )
    manager.start()
    with manager.handle("m") as handle:
        loaded = handle.servable
    with pytest.raises(InvalidArgument) as refused:
        manager.reload([reload_with_platform(base, after, version_labels={"stable": 1})])
    assert str(refused.value) == (
        f"Illegal to change a model's platform. For model m platform was "
        f"{before or 'tensorflow'} and new platform requested is {after}"
    )
    # the old config stays in force: same version, not reloaded, no label added
    assert loaders.calls == [("m", 1)]
    assert states(manager) == [(1, State.AVAILABLE)]
    with manager.handle("m") as handle:
        assert handle.servable is loaded
    with pytest.raises(InvalidArgument, match="Unrecognized servable version label: stable"):
        manager.handle("m", label="stable")
    manager.stop()


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("", "tensorflow"),
        ("tensorflow", " TensorFlow "),
        ("openvino", "OpenVINO:fp32,latency"),
        ("openvino:bf16,strict", "openvino:strict,bf16,max_relative_error=0.1"),
        ("openvino", "openvino:min_top1_agreement=1,max_relative_error=1e-4"),
    ],
)
def test_equivalent_platform_spellings_are_no_change(base, before, after):
    loaders = FakeLoaders()
    add_version(base, 1)
    manager = ModelManager(
        [reload_with_platform(base, before)], loaders, ManagerOptions(poll_seconds=0)
    )
    manager.start()
    manager.reload([reload_with_platform(base, after, version_labels={"stable": 1})])
    assert serving_version(manager, "m", label="stable") == 1
    assert loaders.calls == [("m", 1)]  # nothing reloaded
    manager.stop()


def test_a_removed_model_may_come_back_on_another_platform(base, tmp_path):
    """Only a model in both the old and the new config keeps its platform (as TF Serving)."""
    (tmp_path / "other").mkdir()
    add_version(base, 1)
    manager = ModelManager(
        [reload_with_platform(base, "tensorflow")], FakeLoaders(), ManagerOptions(poll_seconds=0)
    )
    manager.start()
    manager.reload([ModelConfig("other", str(tmp_path / "other"))])
    manager.reload([reload_with_platform(base, "openvino")])
    assert serving_version(manager, "m") == 1
    manager.stop()
