"""Shared fixtures of the client and convert tests: a tiny frozen graph with the seed's ResNet-50
interface, converted by `sealserve models convert`, and real servers on loopback (plaintext,
one-way TLS, mutual TLS) serving it as `resnet50-v15-fp32` beside half_plus_two.

Test modules load this as a plugin (`pytest_plugins = ["tests.client"]`) rather than importing
the fixtures, so that the session-scoped servers are one set for every module that uses them
(imported fixtures would be one per module). PYTEST_DONT_REWRITE: pytest imports this package
before it loads it as a plugin, too late to rewrite its asserts, and would warn about that.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from sealserve.serving.keys import StaticKeyProvider
from sealserve.serving.model_config import ModelConfig
from sealserve.serving.tls import load_ssl_config
from sealserve.serving.version_policy import VersionPolicy
from sealserve.tools.certs import CertificateSet, make_oneway, make_twoway
from tests.harness import RunningServer, server_options

TINY_MODEL = "resnet50-v15-fp32"  # the seed's model name, so the benchmark's defaults apply
TINY_SHAPE = (8, 8, 3)
TINY_CLASSES = 5
_KERNEL = np.linspace(-0.02, 0.03, 12, dtype=np.float32).reshape(1, 1, 3, 4)
_WEIGHTS = (np.arange(20, dtype=np.float32).reshape(4, 5) - 10) / 10
_BN_EPSILON = 0.001


def write_frozen_graph(path: Path, *, frozen: bool = True) -> Path:
    """A TF1 graph `input` [None,8,8,3] float32 -> 1x1 conv -> batch norm (inference) -> mean
    -> matmul -> softmax `predict` [None,5], frozen with convert_variables_to_constants (or
    left with its variables); the batch norm gives optimize_for_inference something to fold."""
    from sealserve.serving.tensorflow_runtime import import_tensorflow

    tf = import_tensorflow()
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        images = v1.placeholder(tf.float32, [None, *TINY_SHAPE], name="input")
        kernel = v1.get_variable("kernel", initializer=_KERNEL)
        features = tf.nn.conv2d(images, kernel, strides=[1, 1, 1, 1], padding="SAME")
        features = v1.nn.fused_batch_norm(
            features,
            scale=np.ones(4, np.float32),
            offset=np.zeros(4, np.float32),
            mean=np.zeros(4, np.float32),
            variance=np.ones(4, np.float32),
            epsilon=_BN_EPSILON,
            is_training=False,
        )[0]
        pooled = tf.reduce_mean(features, axis=[1, 2])
        weights = v1.get_variable("weights", initializer=_WEIGHTS)
        tf.identity(tf.nn.softmax(tf.matmul(pooled, weights)), name="predict")
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            graph_def = graph.as_graph_def()
            if frozen:
                from tensorflow.python.util import deprecation

                with deprecation.silence():
                    graph_def = v1.graph_util.convert_variables_to_constants(
                        session, graph_def, ["predict"]
                    )
    path.write_bytes(graph_def.SerializeToString())
    return path


def tiny_expected(images: np.ndarray) -> np.ndarray:
    """What the tiny model computes, in numpy."""
    features = images.astype(np.float64) @ _KERNEL[0, 0].astype(np.float64)
    features = features / np.sqrt(1 + _BN_EPSILON)
    logits = features.mean(axis=(1, 2)) @ _WEIGHTS.astype(np.float64)
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


@pytest.fixture(scope="session")
def frozen_graph(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_frozen_graph(tmp_path_factory.mktemp("graph") / "tiny_resnet.pb")


@pytest.fixture(scope="session")
def client_models(
    tmp_path_factory: pytest.TempPathFactory, frozen_graph: Path, half_plus_two: Path
) -> Path:
    """A model root: the tiny graph converted to `resnet50-v15-fp32/1`, and half_plus_two
    with versions 1 and 2."""
    from sealserve.tools.convert import convert_graph

    root = tmp_path_factory.mktemp("client_models")
    convert_graph(frozen_graph, root / TINY_MODEL, 1, ["input"], ["predict"])
    for version in ("1", "2"):
        shutil.copytree(half_plus_two, root / "half_plus_two" / version)
    return root


def _model_configs(root: Path) -> list[ModelConfig]:
    return [
        ModelConfig(TINY_MODEL, str(root / TINY_MODEL)),
        ModelConfig(
            "half_plus_two",
            str(root / "half_plus_two"),
            VersionPolicy(kind="all"),
            {"stable": 1, "canary": 2},
        ),
    ]


@dataclass
class TlsServer:
    server: RunningServer
    certs: CertificateSet

    @property
    def grpc_target(self) -> str:
        return f"localhost:{self.server.grpc_port}"  # the certificates name localhost

    @property
    def rest_address(self) -> str:
        return f"localhost:{self.server.rest_port}"


@pytest.fixture(scope="session")
def client_plain_server(client_models: Path) -> Iterator[RunningServer]:
    running = RunningServer(server_options(_model_configs(client_models)), StaticKeyProvider({}))
    yield running
    running.stop()


@pytest.fixture(scope="session")
def client_oneway_server(
    client_models: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TlsServer]:
    """One-way TLS as in the seed: a self-signed server certificate is the clients' root."""
    certs = make_oneway("localhost", tmp_path_factory.mktemp("certs") / "oneway")
    options = server_options(
        _model_configs(client_models), ssl=load_ssl_config(certs.ssl_config, None)
    )
    running = RunningServer(options, StaticKeyProvider({}))
    yield TlsServer(running, certs)
    running.stop()


@pytest.fixture(scope="session")
def client_mtls_server(
    client_models: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TlsServer]:
    certs = make_twoway("localhost", "client.local", tmp_path_factory.mktemp("certs") / "twoway")
    config = load_ssl_config(certs.ssl_config, None)
    assert config.client_verify
    running = RunningServer(
        server_options(_model_configs(client_models), ssl=config), StaticKeyProvider({})
    )
    yield TlsServer(running, certs)
    running.stop()
