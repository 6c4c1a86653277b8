"""A server whose models all run on OpenVINO never starts TensorFlow's runtime (about 680 MiB
resident): it speaks TF Serving's protos, reads signatures and warm-up requests, and runs
its models without it. TensorFlow starts once a model needs it (a signature that falls back
to it, a TensorFlow model added by a config change), and then both runtimes serve.

Real `sealserve serve` processes: whether TensorFlow's runtime is in one is read from its
memory map (`/proc/PID/maps`)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from sealserve.model_tree import encrypt_tree
from sealserve.serving.loader import SAVED_MODEL_PB, WARMUP_FILE
from sealserve.serving.tensorflow_runtime import import_tensorflow
from sealserve.tools.models import digits_dataset
from tests.harness import ServeProcess
from tests.serving.conftest import SECRET_KEY

TENSORFLOW_RUNTIME = "_pywrap_tensorflow_internal.so"  # TensorFlow's native runtime
WARMUP_RECORDS = 4


def tensorflow_mapped(pid: int) -> bool:
    return TENSORFLOW_RUNTIME in Path(f"/proc/{pid}/maps").read_text()


def resident_mib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    raise AssertionError("no VmRSS")


def _warmup_file(path: Path, images: np.ndarray) -> None:
    tf = import_tensorflow()
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for batch in np.array_split(images, WARMUP_RECORDS):
            request = predict_pb2.PredictRequest()
            request.inputs["image"].CopyFrom(tf.make_tensor_proto(batch))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
            writer.write(log.SerializeToString())


def _only_signatures(directory: Path, keep: set[str]) -> None:
    from tensorflow.core.protobuf import saved_model_pb2

    path = directory / SAVED_MODEL_PB
    message = saved_model_pb2.SavedModel.FromString(path.read_bytes())
    for meta_graph in message.meta_graphs:
        for key in set(meta_graph.signature_def) - keep:
            del meta_graph.signature_def[key]
    path.write_bytes(message.SerializeToString())


@pytest.fixture(scope="module")
def models(tmp_path_factory, digits_model, half_plus_two) -> Path:
    """Encrypted trees: `digits_numeric` (the digits classifier with its predict signature
    only, which OpenVINO converts, and warm-up requests), `digits` (its classify signature
    parses tf.Examples: it falls back to TensorFlow), `half_plus_two`; and their key."""
    root = tmp_path_factory.mktemp("openvino_without_tensorflow")
    plain = root / "plain"
    shutil.copytree(digits_model, plain)
    _warmup_file(plain / WARMUP_FILE, digits_dataset()[2][:8])
    encrypt_tree(plain, str(root / "digits" / "1"), SECRET_KEY)
    _only_signatures(plain, {"serving_default"})
    encrypt_tree(plain, str(root / "digits_numeric" / "1"), SECRET_KEY)
    shutil.rmtree(plain)
    encrypt_tree(half_plus_two, str(root / "half_plus_two" / "1"), SECRET_KEY)
    (root / "key").write_bytes(SECRET_KEY)
    (root / "key").chmod(0o600)
    return root


def write_config(path: Path, root: Path, models: dict[str, str]) -> None:
    """The model config file: each model (its tree under `root`) on its platform."""
    entries = "\n".join(
        f'config {{ name: "{name}" base_path: "{root / tree}" model_platform: "{platform}" }}'
        for name, (tree, platform) in ((n, p.split("@")) for n, p in models.items())
    )
    path.write_text("model_config_list {\n" + entries + "\n}\n")


@pytest.fixture
def serve(models, tmp_path) -> Iterator[Callable[[dict[str, str]], ServeProcess]]:
    """`serve({name: "tree@platform"})`: a server of those models, its config polled each
    second (`server.config` to change it)."""
    started: list[ServeProcess] = []

    def start(config: dict[str, str]) -> ServeProcess:
        path = tmp_path / "models.config"
        write_config(path, models, config)
        keys = [f"--model_key={name}={models / 'key'}" for name in ("digits", "digits_tf")]
        keys += [f"--model_key={n}={models / 'key'}" for n in ("digits_numeric", "half_plus_two")]
        server = ServeProcess(
            f"--model_config_file={path}",
            "--model_config_file_poll_wait_seconds=1",
            "--bind_address=127.0.0.1",
            "--tensorflow_intra_op_parallelism=1",
            *keys,
        )
        server.config = path  # type: ignore[attr-defined]
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def rest(server: ServeProcess, method: str, path: str, body: Any = None) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.rest_port}{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
    )
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.loads(answer.read())


def state(server: ServeProcess, model: str) -> str:
    try:
        return rest(server, "GET", f"/v1/models/{model}")["model_version_status"][0]["state"]
    except (OSError, ValueError, KeyError, IndexError):
        return ""


def wait_for(server: ServeProcess, models: list[str]) -> None:
    deadline = time.monotonic() + 600
    while not all(state(server, m) == "AVAILABLE" for m in models):
        assert server.process.poll() is None, server.stderr
        assert time.monotonic() < deadline, server.stderr
        time.sleep(0.5)


def tensorflow_answers(digits_model: Path, images: np.ndarray) -> dict[str, np.ndarray]:
    tf = import_tensorflow()
    predict = tf.saved_model.load(str(digits_model)).signatures["serving_default"]
    return {alias: tensor.numpy() for alias, tensor in predict(image=images).items()}


def test_an_openvino_only_server_serves_without_tensorflows_runtime(serve, digits_model):
    from tensorflow_serving.apis import (
        get_model_metadata_pb2,
        get_model_status_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    server = serve({"digits_numeric": "digits_numeric@openvino"})
    pid = server.process.pid
    images = digits_dataset()[2][:5]
    expected = tensorflow_answers(digits_model, images)

    answer = rest(
        server, "POST", "/v1/models/digits_numeric:predict", {"instances": images.tolist()}
    )
    scores = np.array([p["scores"] for p in answer["predictions"]], np.float32)
    np.testing.assert_allclose(scores, expected["scores"], rtol=1e-4, atol=1e-6)
    assert [p["classes"] for p in answer["predictions"]] == expected["classes"].tolist()

    tf = import_tensorflow()
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        predictions = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "digits_numeric"
        request.inputs["image"].CopyFrom(tf.make_tensor_proto(images))
        response = predictions.Predict(request, timeout=60)
        assert tf.make_ndarray(response.outputs["classes"]).tolist() == expected["classes"].tolist()
        ask = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        ask.model_spec.name = "digits_numeric"
        metadata = predictions.GetModelMetadata(ask, timeout=60).metadata["signature_def"]
        assert "serving_default" in metadata.value.decode("latin-1")
        status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
            get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "digits_numeric"}),
            timeout=60,
        )
        assert [s.state for s in status.model_version_status] == [
            get_model_status_pb2.ModelVersionStatus.AVAILABLE
        ]
    signature = rest(server, "GET", "/v1/models/digits_numeric/metadata")["metadata"]
    assert signature["signature_def"]["signature_def"]["serving_default"]["inputs"]["image"]

    assert not tensorflow_mapped(pid), "TensorFlow's runtime was started"
    print(f"\nan OpenVINO-only server serving digits: {resident_mib(pid)} MiB resident")
    server.stop()
    log = server.stderr
    assert f"replayed {WARMUP_RECORDS} warmup requests" in log
    assert "Traceback" not in log


def test_tensorflow_starts_when_a_model_needs_it_and_both_runtimes_serve(serve, models):
    server = serve({"digits_numeric": "digits_numeric@openvino"})
    pid = server.process.pid
    assert not tensorflow_mapped(pid)

    # a signature that falls back to TensorFlow, a model on TensorFlow: polled, loaded late
    write_config(
        server.config,  # type: ignore[attr-defined]
        models,
        {
            "digits_numeric": "digits_numeric@openvino",
            "digits": "digits@openvino",
            "digits_tf": "digits@tensorflow",
            "half_plus_two": "half_plus_two@tensorflow",
        },
    )
    wait_for(server, ["digits", "digits_tf", "half_plus_two"])
    assert tensorflow_mapped(pid)

    images = digits_dataset()[2][:6]
    answers = {
        name: rest(server, "POST", f"/v1/models/{name}:predict", {"instances": images.tolist()})
        for name in ("digits_numeric", "digits", "digits_tf")
    }
    theirs = answers["digits_tf"]["predictions"]
    for name in ("digits_numeric", "digits"):
        ours = answers[name]["predictions"]
        assert [p["classes"] for p in ours] == [p["classes"] for p in theirs]
        np.testing.assert_allclose(
            [p["scores"] for p in ours], [p["scores"] for p in theirs], rtol=1e-4, atol=1e-6
        )
    examples = [{"image": image.ravel().tolist()} for image in images]
    classified = rest(
        server, "POST", "/v1/models/digits:classify",
        {"signature_name": "classify", "examples": examples},
    )  # fmt: skip
    best = [max(result, key=lambda pair: pair[1])[0] for result in classified["results"]]
    assert best == [str(p["classes"]) for p in theirs]
    halves = rest(server, "POST", "/v1/models/half_plus_two:predict", {"instances": [1.0, 5.0]})
    assert halves == {"predictions": [2.5, 4.5]}

    assert server.stop() == 0
    log = server.stderr
    # TensorFlow's native start-up lines are dropped; the server's own lines around them stay
    assert "cudart_stub" not in log and "cuInit" not in log
    assert "OpenVINO cannot convert signature classify" in log
    for name in ("digits", "digits_tf", "half_plus_two"):
        assert f"model {name} version 1 loading" in log
    assert "Traceback" not in log


def test_a_server_with_a_tensorflow_model_serves_it_on_tensorflows_runtime(serve):
    server = serve({"half_plus_two": "half_plus_two@tensorflow"})
    assert tensorflow_mapped(server.process.pid)
    halves = rest(server, "POST", "/v1/models/half_plus_two:predict", {"instances": [1.0]})
    assert halves == {"predictions": [2.5]}
    assert server.stop() == 0
    assert "cudart_stub" not in server.stderr and "cuInit" not in server.stderr


LOADS = """
import sys
import numpy as np
from pathlib import Path
from sealserve.serving.tensorflow_runtime import defer_runtime, started
assert defer_runtime()
from sealserve.serving.keys import StaticKeyProvider
from sealserve.serving.loader import LoadOptions, VersionLoader
from sealserve.serving.runtimes import conversion, parse_runtime

tree, key = Path(sys.argv[1]), bytes.fromhex(sys.argv[2])
images = np.zeros((2, 8, 8, 1), np.float32)

def load():
    return VersionLoader(
        "digits_numeric", 1, tree, StaticKeyProvider({"digits_numeric": key}), LoadOptions(),
        runtime=parse_runtime("openvino"),
    ).load()

servable = load()  # converted in a conversion process
print(servable.runtime_labels, servable.run("serving_default", {"image": images})["classes"].shape,
      started())
# where no process can start (Gramine forbids them), the conversion runs here: TensorFlow
# starts for it
conversion.ConversionProcess._spawn = classmethod(lambda cls, model, quiet=False: None)
servable = load()
print(servable.runtime_labels, servable.run("serving_default", {"image": images})["classes"].shape,
      started())
"""


def test_tensorflow_starts_for_a_conversion_in_the_servers_own_process(models):
    result = subprocess.run(
        [sys.executable, "-c", LOADS, str(models / "digits_numeric" / "1"), SECRET_KEY.hex()],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    converted = "{'serving_default': 'OpenVINO'} (2,)"
    assert result.stdout.splitlines() == [f"{converted} False", f"{converted} True"]
    assert "cudart_stub" not in result.stderr and "cuInit" not in result.stderr  # quietly
