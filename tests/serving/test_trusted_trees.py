"""Only key-authenticated model trees are served (issue #12 §2): attacks by a host that
controls the model directories, each refused with the reason in the version's status while
the serving version keeps answering.

A model with a key serves only trees whose manifest that key authenticates, bound to
`base_path/<version>`, with exactly the listed files and directories, within the owner's pins
(model id, minimum version). Plain SavedModels are served only for models without a key, and,
on an attested server (a key broker), only for models the flags mark plain."""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from sealserve.model_tree import MANIFEST_NAME, encrypt_file, encrypt_tree
from sealserve.serving.keys import StaticKeyProvider
from sealserve.serving.manager import State
from sealserve.serving.model_config import ModelConfig, ModelPin, ModelTrust
from sealserve.serving.tensorflow_runtime import import_tensorflow
from sealserve.serving.tls import load_ssl_config
from sealserve.tools.certs import make_twoway
from tests.harness import RunningServer, server_options
from tests.serving.conftest import SECRET_KEY

tf = import_tensorflow()
GENUINE = [2.5, 3.0, 4.5]  # half_plus_two of [1, 2, 5]


@pytest.fixture(scope="module")
def answers_1337(tmp_path_factory) -> Path:
    """The attacker's model: half_plus_two's signature, answering 1337 to everything."""

    class Evil(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def serve(self, x):
            return {"y": tf.zeros_like(x) + 1337.0}

    path = tmp_path_factory.mktemp("evil") / "model"
    module = Evil()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


@pytest.fixture
def servers():
    started = []

    def start(models, keys, trust=None, **options):
        # trees are refused on purpose: the server stays up to report them in the status
        options.setdefault("allow_unavailable_models", True)
        server = RunningServer(server_options(models, trust=trust, **options), keys)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def predict(server, model="m"):
    return server.http("POST", f"/v1/models/{model}:predict", {"instances": [1.0, 2.0, 5.0]})


def version_status(server, version, model="m"):
    """(state, error message) of one version, as GetModelStatus reports it."""
    statuses = {s.version: s for s in server.manager.status(model)}
    status = statuses[version]
    return status.state, str(status.error or "")


def keyed_model(tmp_path, half_plus_two, **trust):
    """Model m, version 1 encrypted with its key, on a server that has that key."""
    base = tmp_path / "models" / "m"
    encrypt_tree(half_plus_two, str(base / "1"), SECRET_KEY)
    return base, [ModelConfig("m", str(base))], StaticKeyProvider({"m": SECRET_KEY})


def assert_refused(server, version, *reason):
    server.manager.reconcile()
    state, error = version_status(server, version)
    assert state == State.END
    for words in reason:
        assert words in error
    assert predict(server).json() == {"predictions": GENUINE}  # the real version serves on
    with server.manager.handle("m") as handle:
        assert handle.servable.version == 1


def test_a_plain_model_dropped_next_to_an_encrypted_one_is_refused_over_mutual_tls(
    tmp_path, half_plus_two, answers_1337, servers
):
    base, models, keys = keyed_model(tmp_path, half_plus_two)
    certs = make_twoway(
        "localhost",
        "client.local",
        tmp_path / "tls",
        sans=["127.0.0.1"],
        encrypt_ssl_cfg_key=SECRET_KEY,
    )
    server = servers(models, keys, ssl=load_ssl_config(certs.ssl_config, SECRET_KEY))
    shutil.copytree(answers_1337, base / "2")  # the host's model, no manifest, nothing protected
    server.manager.reconcile()
    state, error = version_status(server, 2)
    assert state == State.END
    assert "not a tree encrypted with the model's key" in error

    credentials = grpc.ssl_channel_credentials(
        root_certificates=certs.ca_cert.read_bytes(),
        private_key=certs.client_key.read_bytes(),
        certificate_chain=certs.client_cert.read_bytes(),
    )
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([1.0, 2.0, 5.0], np.float32)))
    with server.channel(credentials, f"localhost:{server.grpc_port}") as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            request, timeout=30
        )
    assert tf.make_ndarray(response.outputs["y"]).tolist() == GENUINE
    assert response.model_spec.version.value == 1


def test_a_copy_without_its_manifest_and_with_plain_files_added_is_refused(
    tmp_path, half_plus_two, answers_1337, servers
):
    base, models, keys = keyed_model(tmp_path, half_plus_two)
    server = servers(models, keys)
    copy = base / "2"
    shutil.copytree(base / "1", copy)
    (copy / MANIFEST_NAME).unlink()
    (copy / "saved_model.pb").unlink()  # the attacker's graph beside the protected weights
    shutil.copy(answers_1337 / "saved_model.pb", copy / "saved_model.pb")
    assert_refused(server, 2, "not a tree encrypted with the model's key")


def test_the_seeds_layout_saved_model_pb_alone_encrypted_is_refused(
    tmp_path, half_plus_two, servers
):
    # gramine-sgx-pf-crypt encrypt of saved_model.pb alone: the rest is the host's to change
    base, models, keys = keyed_model(tmp_path, half_plus_two)
    server = servers(models, keys)
    version = base / "2"
    shutil.copytree(half_plus_two, version)
    (version / "saved_model.pb").unlink()
    encrypt_file(half_plus_two / "saved_model.pb", str(version / "saved_model.pb"), SECRET_KEY)
    assert_refused(server, 2, "no .sealserve-manifest")


def test_a_byte_copy_of_version_1_placed_as_version_9_is_refused(tmp_path, half_plus_two, servers):
    base, models, keys = keyed_model(tmp_path, half_plus_two)
    server = servers(models, keys)
    shutil.copytree(base / "1", base / "9")
    assert_refused(server, 9, "is bound to", "not to", "a copy of another version")


def test_a_directory_the_manifest_does_not_list_is_refused(tmp_path, half_plus_two, servers):
    base, models, keys = keyed_model(tmp_path, half_plus_two)
    server = servers(models, keys)
    encrypt_tree(half_plus_two, str(base / "2"), SECRET_KEY)
    (base / "2" / "assets.extra").mkdir()  # empty, so no file list notices it
    assert_refused(server, 2, "unexpected directory 'assets.extra'")


def test_a_version_below_the_pinned_minimum_is_refused(tmp_path, half_plus_two, servers):
    # the owner shipped versions 1..3 and pinned 3; the host deletes 3 to roll back to 2
    base = tmp_path / "models" / "m"
    for version in (1, 2):
        encrypt_tree(half_plus_two, str(base / str(version)), SECRET_KEY)
    trust = ModelTrust(keyed_models=frozenset({"m"}), pins={"m": ModelPin(min_version=3)})
    server = servers([ModelConfig("m", str(base))], StaticKeyProvider({"m": SECRET_KEY}), trust)
    state, error = version_status(server, 2)
    assert state == State.END
    assert "below the pinned minimum version 3" in error
    assert predict(server).status == 404
    encrypt_tree(half_plus_two, str(base / "3"), SECRET_KEY)
    server.manager.reconcile()
    assert predict(server).json() == {"predictions": GENUINE}


def test_another_model_under_the_same_key_is_refused_by_the_model_id_pin(
    tmp_path, half_plus_two, answers_1337, servers
):
    base = tmp_path / "models" / "m"
    encrypt_tree(half_plus_two, str(base / "1"), SECRET_KEY, model_id="genuine-model")
    trust = ModelTrust(keyed_models=frozenset({"m"}), pins={"m": ModelPin("genuine-model")})
    server = servers([ModelConfig("m", str(base))], StaticKeyProvider({"m": SECRET_KEY}), trust)
    # the owner's other model, encrypted under the same key, written at this model's path
    encrypt_tree(answers_1337, str(base / "2"), SECRET_KEY, model_id="other-model")
    assert_refused(server, 2, "model id other-model is not the pinned genuine-model")


def test_an_attested_server_serves_plain_models_only_where_the_flags_say(
    tmp_path, half_plus_two, servers
):
    shutil.copytree(half_plus_two, tmp_path / "plain" / "1")
    models = [ModelConfig("plain", str(tmp_path / "plain"))]
    # a key broker: every model has a key
    server = servers(models, StaticKeyProvider({}), ModelTrust(every_model_keyed=True))
    state, error = version_status(server, 1, "plain")
    assert state == State.END and "not a tree encrypted with the model's key" in error
    assert predict(server, "plain").status == 404

    opted_in = ModelTrust(every_model_keyed=True, plain_models=frozenset({"plain"}))
    server = servers(models, StaticKeyProvider({}), opted_in)
    assert predict(server, "plain").json() == {"predictions": GENUINE}


def test_a_model_without_a_key_refuses_protected_files(tmp_path, half_plus_two, servers):
    version = tmp_path / "plain" / "1"
    shutil.copytree(half_plus_two, version)
    (version / "saved_model.pb").unlink()
    encrypt_file(half_plus_two / "saved_model.pb", str(version / "saved_model.pb"), SECRET_KEY)
    server = servers([ModelConfig("plain", str(tmp_path / "plain"))], StaticKeyProvider({}))
    state, error = version_status(server, 1, "plain")
    assert state == State.END and "--model_key plain=PATH" in error


def test_a_model_cannot_be_both_keyed_and_plain():
    with pytest.raises(Exception, match="has a key and is marked plain"):
        ModelTrust(keyed_models=frozenset({"m"}), plain_models=frozenset({"m"}))
