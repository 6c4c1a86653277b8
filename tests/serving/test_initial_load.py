"""The outcome of the initial load, as tensorflow_model_server's ServerCore: a start that
leaves any model without an available version fails before a port opens, with one reason per
model (several models, one failing: the whole start fails); `allow_unavailable_models` keeps
the server up, serving the others and reporting the failure in the status, and the base paths
are still polled, so a fixed version loads."""

from __future__ import annotations

import shutil
import time

import pytest

from sealserve.errors import NotFound
from sealserve.model_tree import encrypt_tree
from sealserve.serving.keys import StaticKeyProvider
from sealserve.serving.manager import State
from sealserve.serving.model_config import ModelConfig
from sealserve.serving.server import ModelServer, ModelsUnavailable
from tests.harness import LoopThread, RunningServer, server_options
from tests.serving.conftest import SECRET_KEY


def wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def start_fails(options, keys) -> ModelsUnavailable:
    """Start a server that must refuse to start; its error, after stopping what began."""
    server = ModelServer(options, keys)
    loop = LoopThread()
    try:
        with pytest.raises(ModelsUnavailable) as failed:
            loop.run(server.start())
        assert server.grpc_port is None and server.rest_port is None  # no port opened
        loop.run(server.stop())
    finally:
        loop.close()
    return failed.value


def available(server: RunningServer, model: str) -> bool:
    try:
        return server.manager.status(model)[0].state == State.AVAILABLE
    except NotFound:  # between the removal of the old tree and the next scan
        return False


@pytest.fixture
def good_and_broken(tmp_path, half_plus_two):
    """Model `good` (plain) and model `broken`, whose only version is encrypted under a
    key other than the one the server has."""
    shutil.copytree(half_plus_two, tmp_path / "good" / "1")
    encrypt_tree(half_plus_two, str(tmp_path / "broken" / "1"), bytes(16))
    models = [
        ModelConfig("good", str(tmp_path / "good")),
        ModelConfig("broken", str(tmp_path / "broken")),
    ]
    return tmp_path, models, StaticKeyProvider({"broken": SECRET_KEY})


def test_one_model_failing_its_initial_load_fails_the_whole_start(good_and_broken):
    _, models, keys = good_and_broken
    error = start_fails(server_options(models), keys)
    assert list(error.reasons) == ["broken"]  # one line per failed model, and only those
    assert error.reasons["broken"].startswith("version 1 failed to load: authentication failed")
    assert "\n" not in str(error)


def test_a_model_without_any_version_fails_the_start(tmp_path, half_plus_two):
    shutil.copytree(half_plus_two, tmp_path / "good" / "1")
    (tmp_path / "empty").mkdir()
    models = [
        ModelConfig("good", str(tmp_path / "good")),
        ModelConfig("empty", str(tmp_path / "empty")),
    ]
    error = start_fails(server_options(models), StaticKeyProvider({}))
    assert error.reasons == {"empty": f"no version directory under {tmp_path / 'empty'}"}


def test_every_failed_model_is_named(tmp_path, half_plus_two):
    for name in ("a", "b"):
        encrypt_tree(half_plus_two, str(tmp_path / name / "1"), bytes(16))
    models = [ModelConfig(n, str(tmp_path / n)) for n in ("a", "b")]
    keys = StaticKeyProvider({"a": SECRET_KEY, "b": SECRET_KEY})
    error = start_fails(server_options(models), keys)
    assert sorted(error.reasons) == ["a", "b"]


def test_allow_unavailable_models_serves_the_others_and_keeps_polling(good_and_broken):
    root, models, keys = good_and_broken
    server = RunningServer(server_options(models, allow_unavailable_models=True), keys)
    try:
        ok = server.http("POST", "/v1/models/good:predict", {"instances": [1.0, 2.0, 5.0]})
        assert ok.json() == {"predictions": [2.5, 3.0, 4.5]}
        (status,) = server.manager.status("broken")
        assert status.state == State.END and "authentication failed" in str(status.error)
        # the owner puts the right tree in place: the poll loads it
        shutil.rmtree(root / "broken" / "1")
        encrypt_tree(root / "good" / "1", str(root / "broken" / "1"), SECRET_KEY)
        wait_for(lambda: available(server, "broken"))
        fixed = server.http("POST", "/v1/models/broken:predict", {"instances": [1.0]})
        assert fixed.json() == {"predictions": [2.5]}
    finally:
        server.stop()


def test_a_failed_version_of_a_served_model_is_still_logged_at_start(
    tmp_path, half_plus_two, caplog
):
    """The start leaves the reasons of unavailable models to its caller (said once), but a
    failed version of a model another version serves is reported nowhere else: logged."""
    from sealserve.serving.version_policy import VersionPolicy

    encrypt_tree(half_plus_two, str(tmp_path / "m" / "1"), SECRET_KEY)
    encrypt_tree(half_plus_two, str(tmp_path / "m" / "2"), bytes(16))  # not m's key
    models = [ModelConfig("m", str(tmp_path / "m"), version_policy=VersionPolicy(kind="all"))]
    keys = StaticKeyProvider({"m": SECRET_KEY})
    with caplog.at_level("ERROR", logger="sealserve"):
        RunningServer(server_options(models), keys).stop()
    said = [r.getMessage() for r in caplog.records if "failed to load" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("model m version 2 failed to load: "), said
