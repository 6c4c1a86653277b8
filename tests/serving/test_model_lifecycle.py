"""Versions coming and going on a real server: encrypted trees with wrong keys or tampered
files, the seed's single encrypted saved_model.pb, polling, and warmup."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest

from sealserve.model_tree import MANIFEST_NAME, encrypt_tree
from sealserve.serving.keys import StaticKeyProvider
from sealserve.serving.loader import WARMUP_FILE
from sealserve.serving.manager import State
from sealserve.serving.model_config import ModelConfig
from sealserve.serving.runtimes import parse_runtime
from sealserve.serving.tensorflow_runtime import import_tensorflow
from tests.harness import RunningServer, server_options
from tests.serving.conftest import SECRET_KEY
from tests.tfrecords import record_file

OTHER_KEY = bytes(16)


def predict(server, model, xs=(1.0, 2.0, 5.0)):
    return server.http("POST", f"/v1/models/{model}:predict", {"instances": list(xs)})


def serving_version(manager, name):
    with manager.handle(name) as handle:
        return handle.servable.version


def wait_for(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


@pytest.fixture
def running(tmp_path):
    servers = []

    def start(models, keys):
        # loads fail on purpose here: the server stays up to report them in the status
        options = server_options(models, allow_unavailable_models=True)
        server = RunningServer(options, StaticKeyProvider(keys))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def test_wrong_key_ends_the_version_with_a_clear_error_and_others_keep_serving(
    tmp_path, half_plus_two, running
):
    encrypt_tree(half_plus_two, str(tmp_path / "locked" / "1"), SECRET_KEY)
    shutil.copytree(half_plus_two, tmp_path / "open" / "1")
    server = running(
        [
            ModelConfig("locked", str(tmp_path / "locked")),
            ModelConfig("open", str(tmp_path / "open")),
        ],
        {"locked": OTHER_KEY},
    )
    status = server.http("GET", "/v1/models/locked").json()["model_version_status"][0]
    assert status["state"] == "END"
    assert status["status"]["error_code"] == "DATA_LOSS"
    assert "authentication failed" in status["status"]["error_message"]
    assert predict(server, "locked").status == 404
    assert predict(server, "open").json() == {"predictions": [2.5, 3.0, 4.5]}


def test_a_tampered_tree_is_refused_with_the_reason_in_its_status(tmp_path, half_plus_two, running):
    tree = tmp_path / "m" / "1"
    encrypt_tree(half_plus_two, str(tree), SECRET_KEY)
    (tree / "saved_model.pb").unlink()
    server = running([ModelConfig("m", str(tmp_path / "m"))], {"m": SECRET_KEY})
    status = server.http("GET", "/v1/models/m").json()["model_version_status"][0]
    assert status["state"] == "END"
    assert "'saved_model.pb' is missing" in status["status"]["error_message"]


def test_an_encrypted_model_without_its_key_says_which_flag_is_missing(
    tmp_path, half_plus_two, running
):
    encrypt_tree(half_plus_two, str(tmp_path / "m" / "1"), SECRET_KEY)
    server = running([ModelConfig("m", str(tmp_path / "m"))], {})
    status = server.http("GET", "/v1/models/m").json()["model_version_status"][0]
    assert "--model_key m=PATH" in status["status"]["error_message"]


def test_polling_loads_a_new_version_before_unloading_the_old(tmp_path, half_plus_two, running):
    base = tmp_path / "m"
    encrypt_tree(half_plus_two, str(base / "1"), SECRET_KEY)
    server = running([ModelConfig("m", str(base))], {"m": SECRET_KEY})
    assert server.http("GET", "/v1/models/m").json()["model_version_status"][0]["version"] == "1"
    staged = tmp_path / "staging"
    encrypt_tree(half_plus_two, str(staged), SECRET_KEY, bound_root=str(base / "2"))
    staged.rename(base / "2")  # what a deployment does: an atomic rename
    wait_for(lambda: [s.state for s in server.manager.status("m")] == [State.AVAILABLE, State.END])
    assert serving_version(server.manager, "m") == 2
    assert predict(server, "m").json() == {"predictions": [2.5, 3.0, 4.5]}


def test_a_broken_new_version_leaves_the_old_one_serving(tmp_path, half_plus_two, running):
    base = tmp_path / "m"
    encrypt_tree(half_plus_two, str(base / "1"), SECRET_KEY)
    server = running([ModelConfig("m", str(base))], {"m": SECRET_KEY})
    staged = tmp_path / "staging"
    # encrypted with the wrong key
    encrypt_tree(half_plus_two, str(staged), OTHER_KEY, bound_root=str(base / "2"))
    staged.rename(base / "2")
    wait_for(lambda: server.manager.status("m")[0].state == State.END)
    assert serving_version(server.manager, "m") == 1
    assert predict(server, "m").json() == {"predictions": [2.5, 3.0, 4.5]}


def _warmup_file(path, xs, alias="x"):
    tf = import_tensorflow()
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    request.inputs[alias].CopyFrom(tf.make_tensor_proto(np.asarray(xs, np.float32)))
    record = prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(record.SerializeToString())


def test_warmup_requests_are_replayed_from_inside_the_encrypted_tree(
    tmp_path, half_plus_two, running, caplog
):
    plain = tmp_path / "plain"
    shutil.copytree(half_plus_two, plain)
    _warmup_file(plain / WARMUP_FILE, [1.0, 2.0])
    encrypt_tree(plain, str(tmp_path / "m" / "1"), SECRET_KEY)
    assert (tmp_path / "m" / "1" / WARMUP_FILE).read_bytes()[:8] == b"GRAFS_PF"
    with caplog.at_level("INFO", logger="sealserve.serving.loader"):
        server = running([ModelConfig("m", str(tmp_path / "m"))], {"m": SECRET_KEY})
    assert "replayed 1 warmup requests" in caplog.text
    assert predict(server, "m").status == 200


def test_a_failing_warmup_request_fails_the_load(tmp_path, half_plus_two, running):
    plain = tmp_path / "plain"
    shutil.copytree(half_plus_two, plain)
    _warmup_file(plain / WARMUP_FILE, [[1.0, 2.0]], alias="x2")  # no such input
    encrypt_tree(plain, str(tmp_path / "m" / "1"), SECRET_KEY)
    server = running([ModelConfig("m", str(tmp_path / "m"))], {"m": SECRET_KEY})
    status = server.http("GET", "/v1/models/m").json()["model_version_status"][0]
    assert status["state"] == "END"
    assert "warmup request 1 failed" in status["status"]["error_message"]
    assert MANIFEST_NAME  # the tree itself was fine


def _damaged(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x10]) + data[offset + 1 :]


@pytest.mark.parametrize("runtime", ["tensorflow", "openvino"])
@pytest.mark.parametrize(
    ("damage", "code", "message"),
    [
        (lambda data: _damaged(data, 14), "DATA_LOSS", "corrupted record at 12"),
        (lambda data: data[:-1], "DATA_LOSS", "truncated record at 0"),
        (lambda data: record_file([b"\xff\xff"]), "INVALID_ARGUMENT", "record 1 is not"),
    ],
    ids=["a bad CRC", "cut short", "not a PredictionLog"],
)
def test_a_damaged_warmup_file_fails_the_load_in_one_line(
    tmp_path, half_plus_two, running, runtime, damage, code, message
):
    """As TF Serving, whose warm-up reads the file with TensorFlow's record reader: the
    version ends with DATA_LOSS and the reader's words (INVALID_ARGUMENT for a record that
    is not a PredictionLog), on either runtime, the others serve on."""
    plain = tmp_path / "m" / "1"
    shutil.copytree(half_plus_two, plain)
    _warmup_file(plain / WARMUP_FILE, [1.0, 2.0])
    (plain / WARMUP_FILE).write_bytes(damage((plain / WARMUP_FILE).read_bytes()))
    shutil.copytree(half_plus_two, tmp_path / "other" / "1")
    server = running(
        [
            ModelConfig("m", str(tmp_path / "m"), runtime=parse_runtime(runtime)),
            ModelConfig("other", str(tmp_path / "other")),
        ],
        {},
    )
    status = server.http("GET", "/v1/models/m").json()["model_version_status"][0]
    assert status["state"] == "END"
    assert status["status"]["error_code"] == code
    error = status["status"]["error_message"]
    assert error.startswith(f"{WARMUP_FILE}: ") and message in error and "\n" not in error
    assert predict(server, "other").json() == {"predictions": [2.5, 3.0, 4.5]}
