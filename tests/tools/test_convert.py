"""`sealserve models convert`: a frozen TF1 graph made here becomes a SavedModel that our
server loads and serves (the `client_models` fixture converts it; see tests/client), plus the
options and the one-line errors."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from sealserve.client import predict as predict_command
from sealserve.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from sealserve.serving.keys import StaticKeyProvider
from sealserve.serving.loader import LoadOptions, VersionLoader
from sealserve.tools import convert
from sealserve.tools.convert import convert_graph
from tests.client import TINY_MODEL, tiny_expected, write_frozen_graph

pytest_plugins = ["tests.client"]


def load(directory, name="tiny", version=1):
    return VersionLoader(name, version, directory, StaticKeyProvider({}), LoadOptions()).load()


def images(count: int = 2) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 255, (count, 8, 8, 3)).astype(np.float32)


def test_the_converted_graph_is_served_and_predicts(client_models, client_plain_server, capsys):
    version = client_models / TINY_MODEL / "1"
    assert sorted(p.name for p in version.iterdir()) == ["saved_model.pb", "variables"]
    servable = load(version)
    signature = servable.signature("serving_default")
    assert signature.method_name == "tensorflow/serving/predict"
    assert {a: (t.name, t.dtype, t.shape) for a, t in signature.inputs.items()} == {
        "input": ("input:0", "DT_FLOAT", (-1, 8, 8, 3))
    }
    assert {a: (t.name, t.dtype, t.shape) for a, t in signature.outputs.items()} == {
        "predict": ("predict:0", "DT_FLOAT", (-1, 5))
    }
    batch = images()
    result = servable.run("serving_default", {"input": batch})["predict"]
    np.testing.assert_allclose(result, tiny_expected(batch), rtol=1e-5, atol=1e-7)
    # served by `sealserve serve`'s machinery, predicted with `sealserve predict`
    parser = argparse.ArgumentParser()
    predict_command.add_arguments(parser)
    body = json.dumps({"instances": batch.tolist()})
    for where in (
        ["--rest", f"127.0.0.1:{client_plain_server.rest_port}"],
        ["--grpc", f"127.0.0.1:{client_plain_server.grpc_port}"],
    ):
        predict_command.run(parser.parse_args([*where, "-m", TINY_MODEL, "--json", body]))
        served = json.loads(capsys.readouterr().out)["predictions"]
        np.testing.assert_allclose(served, tiny_expected(batch), rtol=1e-5, atol=1e-7)


def test_optimization_folds_the_batch_norm(frozen_graph, tmp_path):
    made = convert_graph(frozen_graph, tmp_path / "optimized")
    plain = convert_graph(frozen_graph, tmp_path / "as-is", optimize=False)

    def ops(directory):
        from tensorflow.core.protobuf import saved_model_pb2

        model = saved_model_pb2.SavedModel.FromString((directory / "saved_model.pb").read_bytes())
        return {node.op for node in model.meta_graphs[0].graph_def.node}

    assert "FusedBatchNormV3" in ops(plain.directory)
    assert "FusedBatchNormV3" not in ops(made.directory)
    assert made.nodes_after < made.nodes_before
    batch = images(1)
    for directory in (made.directory, plain.directory):
        out = load(directory).run("serving_default", {"input": batch})["predict"]
        np.testing.assert_allclose(out, tiny_expected(batch), rtol=1e-5, atol=1e-7)


def test_command_line_with_aliases_signature_and_version(frozen_graph, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    convert.add_arguments(parser)
    args = parser.parse_args(
        [
            "--import_path",
            str(frozen_graph),
            "--export_dir",
            str(tmp_path / "m"),
            "--model_version",
            "7",
            "--inputs",
            "input:0",
            "--outputs",
            "predict",
            "--input_alias",
            "images",
            "--output_alias",
            "scores",
            "--signature_name",
            "classify",
        ]
    )
    assert convert.run(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (
        f"wrote SavedModel {tmp_path}/m/7 (tags serve): signature classify "
        "(tensorflow/serving/predict)"
    )
    assert out[1:3] == [
        "  input  images: float [-1,8,8,3] (tensor input:0)",
        "  output scores: float [-1,5] (tensor predict:0)",
    ]
    assert out[3].startswith("optimized for inference: ")
    signature = load(tmp_path / "m" / "7").signature("classify")
    assert list(signature.inputs) == ["images"] and list(signature.outputs) == ["scores"]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"inputs": ["image"]},
            NotFound,
            "input node 'image' is not in the graph; its placeholders: input",
        ),
        ({"outputs": ["scores"]}, NotFound, "output node 'scores' is not in the graph"),
        (
            {"outputs": ["predict:3"]},
            NotFound,
            "output 'predict:3' does not exist: node 'predict' has 1 output(s)",
        ),
        ({"input_aliases": ["a", "b"]}, InvalidArgument, "1 input(s) but 2 input alias(es)"),
        ({"model_version": 0}, InvalidArgument, "the model version must be a positive number"),
        ({"dtypes": ["float99"]}, InvalidArgument, "unknown dtype 'float99'"),
    ],
)
def test_errors_are_one_line_and_leave_nothing(frozen_graph, tmp_path, kwargs, error, message):
    with pytest.raises(error) as raised:
        convert_graph(frozen_graph, tmp_path / "out", **kwargs)
    assert str(raised.value).startswith(message)
    assert "\n" not in str(raised.value)
    assert not (tmp_path / "out" / "1").exists()
    leftovers = list((tmp_path / "out").glob(".*")) if (tmp_path / "out").exists() else []
    assert leftovers == []  # no temporary directory either


def test_bad_graphs(tmp_path):
    with pytest.raises(NotFound, match="graph .*missing.pb not found"):
        convert_graph(tmp_path / "missing.pb", tmp_path / "out")
    (tmp_path / "garbage.pb").write_bytes(b"\xff\xff\xff not a graph")
    with pytest.raises(InvalidArgument, match="is not a TensorFlow GraphDef"):
        convert_graph(tmp_path / "garbage.pb", tmp_path / "out")
    (tmp_path / "empty.pb").write_bytes(b"")
    with pytest.raises(InvalidArgument, match="holds no graph nodes"):
        convert_graph(tmp_path / "empty.pb", tmp_path / "out")
    unfrozen = write_frozen_graph(tmp_path / "unfrozen.pb", frozen=False)
    with pytest.raises(FailedPrecondition, match=r"not frozen: the outputs need 2 variable\(s\)"):
        convert_graph(unfrozen, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_existing_version_is_never_replaced(frozen_graph, tmp_path):
    (tmp_path / "out" / "1").mkdir(parents=True)
    (tmp_path / "out" / "1" / "keep").write_text("mine")
    with pytest.raises(AlreadyExists):
        convert_graph(frozen_graph, tmp_path / "out")
    assert (tmp_path / "out" / "1" / "keep").read_text() == "mine"
