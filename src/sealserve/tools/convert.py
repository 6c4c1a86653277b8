"""Frozen TensorFlow graph -> SavedModel: `sealserve models convert`.

Replaces the seed's `model_graph_to_saved_model.py` (same flags: `--import_path`,
`--export_dir`, `--model_version`, `--inputs`, `--outputs`). A frozen GraphDef (every weight
a constant, such as Intel's ResNet-50 `.pb`) is optimised for inference with TensorFlow's own
`optimize_for_inference` (strip nodes the outputs do not need, drop training-only nodes, fold
batch norms into convolutions; `toco_compatible` as the seed), imported into a TF1 graph and
written with `SavedModelBuilder`: tag `serve`, one signature (default `serving_default`,
method `tensorflow/serving/predict`) whose input and output aliases default to the node
names (`input` and `predict` for the seed's model), to `EXPORT_DIR/<model_version>/`.

Because the graph is frozen, the weights are inside `saved_model.pb` and there are no
variables: encrypting the result (`sealserve encrypt`) protects everything.

Decisions:
- Names may be given as nodes (`input`) or tensors (`input:0`); several inputs or outputs are
  comma-separated, and `--input_alias` / `--output_alias` rename them in the signature.
- An input's dtype is its placeholder's own unless `--dtypes` says otherwise (the seed
  hard-coded float32).
- A graph with variable nodes on the path to the outputs is refused: the SavedModel would
  have no values for them.
- The version directory appears complete or not at all (`fsio.atomic_output_dir`), and an
  existing one is never replaced.

Every user error is a one-line `SealserveError` (missing file, not a GraphDef, unknown node,
a graph TensorFlow cannot import). TensorFlow is imported on first use; functions are safe to
call from several threads on different outputs.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sealserve.errors import FailedPrecondition, InvalidArgument, NotFound
from sealserve.fsio import atomic_output_dir, read_user_file, refuse_existing
from sealserve.serving.signatures import DEFAULT_SIGNATURE, PREDICT_METHOD, TensorInfo

__all__ = ["ConvertedModel", "add_arguments", "convert_graph", "run"]

VARIABLE_OPS = frozenset({"Variable", "VariableV2", "VarHandleOp", "AutoReloadVariable"})
PLACEHOLDER_OPS = frozenset({"Placeholder", "PlaceholderV2", "PlaceholderWithDefault"})


@dataclass(frozen=True)
class ConvertedModel:
    directory: Path
    signature_name: str
    inputs: dict[str, TensorInfo]
    outputs: dict[str, TensorInfo]
    nodes_before: int
    nodes_after: int


@dataclass(frozen=True)
class _Endpoint:
    node: str
    index: int
    alias: str

    @property
    def tensor(self) -> str:
        return f"{self.node}:{self.index}"


def _endpoints(names: Sequence[str], aliases: Sequence[str] | None, what: str) -> list[_Endpoint]:
    if not names:
        raise InvalidArgument(f"give at least one {what} name")
    if aliases is not None and len(aliases) != len(names):
        raise InvalidArgument(
            f"{len(names)} {what}(s) but {len(aliases)} {what} alias(es): give one per {what}"
        )
    endpoints = []
    for position, name in enumerate(names):
        node, _, index_text = name.strip().partition(":")
        node = node.lstrip("^")
        if not node:
            raise InvalidArgument(f"empty {what} name in {list(names)}")
        try:
            index = int(index_text) if index_text else 0
        except ValueError:
            raise InvalidArgument(f"{what} {name!r}: expected NODE or NODE:INDEX") from None
        alias = aliases[position] if aliases is not None else (node if index == 0 else name)
        endpoints.append(_Endpoint(node, index, alias.strip()))
    seen = [e.alias for e in endpoints]
    duplicates = sorted({a for a in seen if seen.count(a) > 1})
    if duplicates:
        raise InvalidArgument(f"{what} alias(es) used twice: {', '.join(duplicates)}")
    return endpoints


def read_graph_def(path: str | Path) -> Any:
    """A GraphDef from a binary `.pb` (or a text `.pbtxt`)."""
    from google.protobuf import message, text_format

    from sealserve.serving.tensorflow_runtime import import_tensorflow

    tf = import_tensorflow()
    data = read_user_file(path, "graph")
    graph_def = tf.compat.v1.GraphDef()
    try:
        if str(path).endswith((".pbtxt", ".txt")):
            text_format.Parse(data.decode("utf-8"), graph_def)
        else:
            graph_def.ParseFromString(data)
    except (message.DecodeError, text_format.ParseError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"{path} is not a TensorFlow GraphDef: {_first_line(exc)}") from None
    if not graph_def.node:
        raise InvalidArgument(f"{path} holds no graph nodes (is it a frozen GraphDef .pb?)")
    return graph_def


def convert_graph(
    import_path: str | Path,
    export_dir: str | Path,
    model_version: int = 1,
    inputs: Sequence[str] = ("input",),
    outputs: Sequence[str] = ("predict",),
    *,
    input_aliases: Sequence[str] | None = None,
    output_aliases: Sequence[str] | None = None,
    signature_name: str = DEFAULT_SIGNATURE,
    dtypes: Sequence[str] | None = None,
    optimize: bool = True,
    tags: Sequence[str] = ("serve",),
) -> ConvertedModel:
    """Convert a frozen GraphDef into `export_dir/<model_version>/` (see the module doc)."""
    if model_version <= 0:
        raise InvalidArgument(f"the model version must be a positive number, not {model_version}")
    if not signature_name:
        raise InvalidArgument("the signature name is empty")
    target = Path(export_dir) / str(model_version)
    refuse_existing(target)  # before the (possibly long) conversion
    input_ends = _endpoints(inputs, input_aliases, "input")
    output_ends = _endpoints(outputs, output_aliases, "output")

    from sealserve.serving.tensorflow_runtime import import_tensorflow

    tf = import_tensorflow()
    graph_def = read_graph_def(import_path)
    nodes = {node.name: node for node in graph_def.node}
    _check_nodes(nodes, input_ends, output_ends)
    input_types = _input_types(tf, nodes, input_ends, dtypes)
    _check_frozen(graph_def, output_ends)
    nodes_before = len(graph_def.node)
    if optimize:
        graph_def = _optimize(graph_def, input_ends, output_ends, input_types)

    from tensorflow.python.util import deprecation

    graph = tf.Graph()
    # silence(): the TF1 SavedModel API logs a deprecation warning per call
    with graph.as_default(), deprecation.silence():
        try:
            tf.compat.v1.import_graph_def(graph_def, name="")
        except (ValueError, TypeError, tf.errors.OpError) as exc:
            raise InvalidArgument(
                f"TensorFlow cannot import the graph: {_first_line(exc)}"
            ) from None
        build_info = tf.compat.v1.saved_model.build_tensor_info
        signature = tf.compat.v1.saved_model.signature_def_utils.build_signature_def(
            inputs={e.alias: build_info(_tensor(graph, e, "input")) for e in input_ends},
            outputs={e.alias: build_info(_tensor(graph, e, "output")) for e in output_ends},
            method_name=PREDICT_METHOD,
        )
        with tf.compat.v1.Session(graph=graph) as session, atomic_output_dir(target) as tmp:
            # SavedModelBuilder accepts an existing directory only if it is empty: the
            # temporary one is, and it becomes `target` only once everything is written.
            builder = tf.compat.v1.saved_model.Builder(str(tmp))
            builder.add_meta_graph_and_variables(
                session,
                list(tags),
                signature_def_map={signature_name: signature},
                strip_default_attrs=True,
            )
            builder.save()

    from sealserve.serving.servable import signature_infos

    info = signature_infos({signature_name: signature})[signature_name]
    return ConvertedModel(
        target, signature_name, info.inputs, info.outputs, nodes_before, len(graph_def.node)
    )


def _check_nodes(
    nodes: dict[str, Any], input_ends: list[_Endpoint], output_ends: list[_Endpoint]
) -> None:
    for end in input_ends:
        if end.node not in nodes:
            placeholders = sorted(n for n, d in nodes.items() if d.op in PLACEHOLDER_OPS)
            hint = f"; its placeholders: {', '.join(placeholders[:10])}" if placeholders else ""
            raise NotFound(f"input node '{end.node}' is not in the graph{hint}")
    for end in output_ends:
        if end.node not in nodes:
            raise NotFound(f"output node '{end.node}' is not in the graph")
    overlap = {e.node for e in input_ends} & {e.node for e in output_ends}
    if overlap:
        raise InvalidArgument(f"node(s) both input and output: {', '.join(sorted(overlap))}")


def _input_types(
    tf: Any, nodes: dict[str, Any], input_ends: list[_Endpoint], dtypes: Sequence[str] | None
) -> list[int]:
    if dtypes:
        if len(dtypes) not in (1, len(input_ends)):
            raise InvalidArgument(f"give one dtype, or one per input ({len(input_ends)})")
        names = list(dtypes) * (len(input_ends) if len(dtypes) == 1 else 1)
        types = []
        for name in names:
            try:
                types.append(tf.as_dtype(name.strip()).as_datatype_enum)
            except TypeError:
                raise InvalidArgument(f"unknown dtype {name!r} (e.g. float32, uint8)") from None
        return types
    types = []
    for end in input_ends:
        node = nodes[end.node]
        if node.op in PLACEHOLDER_OPS and "dtype" in node.attr:
            types.append(node.attr["dtype"].type)
        else:
            types.append(tf.float32.as_datatype_enum)
    return types


def _optimize(
    graph_def: Any, input_ends: list[_Endpoint], output_ends: list[_Endpoint], types: list[int]
) -> Any:
    from tensorflow.python.tools.optimize_for_inference_lib import optimize_for_inference

    input_nodes = list(dict.fromkeys(e.node for e in input_ends))
    node_types = [types[[e.node for e in input_ends].index(n)] for n in input_nodes]
    from tensorflow.python.util import deprecation

    try:
        with deprecation.silence():  # its helpers log TF1 deprecation warnings
            return optimize_for_inference(
                graph_def, input_nodes, list({e.node: 0 for e in output_ends}), node_types, True
            )
    except (ValueError, KeyError, AssertionError, TypeError) as exc:
        raise InvalidArgument(
            f"cannot optimize the graph for inference: {_first_line(exc)} "
            "(--no_optimize converts it as it is)"
        ) from None


def _check_frozen(graph_def: Any, output_ends: list[_Endpoint]) -> None:
    needed = _ancestors(graph_def, [e.node for e in output_ends])
    variables = sorted(
        node.name for node in graph_def.node if node.name in needed and node.op in VARIABLE_OPS
    )
    if variables:
        shown = ", ".join(variables[:5]) + (", ..." if len(variables) > 5 else "")
        raise FailedPrecondition(
            f"the graph is not frozen: the outputs need {len(variables)} variable(s) ({shown}); "
            "freeze it first (tf.compat.v1.graph_util.convert_variables_to_constants)"
        )


def _ancestors(graph_def: Any, names: list[str]) -> set[str]:
    """The nodes `names` depend on, themselves included (data and control inputs)."""
    inputs = {node.name: node.input for node in graph_def.node}
    seen: set[str] = set()
    pending = list(names)
    while pending:
        name = pending.pop()
        if name in seen or name not in inputs:
            continue
        seen.add(name)
        pending.extend(i.lstrip("^").partition(":")[0] for i in inputs[name])
    return seen


def _tensor(graph: Any, end: _Endpoint, what: str) -> Any:
    try:
        return graph.get_tensor_by_name(end.tensor)
    except (KeyError, ValueError):
        operation = graph.get_operation_by_name(end.node)
        raise NotFound(
            f"{what} '{end.tensor}' does not exist: node '{end.node}' has "
            f"{len(operation.outputs)} output(s)"
        ) from None


def _first_line(exc: BaseException) -> str:
    args = [str(a) for a in exc.args] if exc.args else []
    # optimize_for_inference raises ValueError("Input for ", name, " not found: ", input)
    text = "".join(args) if len(args) > 1 else (args[0] if args else type(exc).__name__)
    text = text.strip().strip("'\"")
    return text.splitlines()[0] if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# Command line


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The seed's flags (`--import_path`, `--export_dir`, `--model_version`, `--inputs`,
    `--outputs`, `--dtypes`) and ours."""
    parser.add_argument(
        "--import_path", required=True, metavar="GRAPH.pb", help="frozen GraphDef (.pb or .pbtxt)"
    )
    parser.add_argument(
        "--export_dir",
        required=True,
        metavar="DIR",
        help="model base path; the SavedModel goes to DIR/<model_version>/",
    )
    parser.add_argument("--model_version", type=int, default=1, help="version number (1)")
    parser.add_argument(
        "--inputs", type=_names, default=["input"], metavar="NAMES", help="input node(s) (input)"
    )
    parser.add_argument(
        "--outputs",
        type=_names,
        default=["predict"],
        metavar="NAMES",
        help="output node(s) (predict)",
    )
    parser.add_argument(
        "--input_alias", type=_names, metavar="NAMES", help="signature names of the inputs"
    )
    parser.add_argument(
        "--output_alias", type=_names, metavar="NAMES", help="signature names of the outputs"
    )
    parser.add_argument("--signature_name", default=DEFAULT_SIGNATURE)
    parser.add_argument(
        "--dtypes",
        type=_names,
        metavar="TYPES",
        help="input dtype(s) (default: each placeholder's own)",
    )
    parser.add_argument(
        "--saved_model_tags", default="serve", help="comma-separated MetaGraph tags (serve)"
    )
    parser.add_argument(
        "--no_optimize",
        action="store_true",
        help="skip optimize_for_inference and keep the graph as it is",
    )


def run(args: argparse.Namespace) -> int:
    tags = _names(args.saved_model_tags)
    if not tags:
        raise InvalidArgument("--saved_model_tags is empty")
    made = convert_graph(
        args.import_path,
        args.export_dir,
        args.model_version,
        args.inputs,
        args.outputs,
        input_aliases=args.input_alias,
        output_aliases=args.output_alias,
        signature_name=args.signature_name,
        dtypes=args.dtypes,
        optimize=not args.no_optimize,
        tags=tags,
    )
    print(
        f"wrote SavedModel {made.directory} (tags {','.join(tags)}): signature "
        f"{made.signature_name} ({PREDICT_METHOD})"
    )
    for kind, tensors in (("input ", made.inputs), ("output", made.outputs)):
        for alias, info in tensors.items():
            print(f"  {kind} {alias}: {_describe(info)}")
    if not args.no_optimize:
        print(f"optimized for inference: {made.nodes_before} -> {made.nodes_after} nodes")
    return 0


def _describe(info: TensorInfo) -> str:
    from sealserve.serving.tensor_proto import data_type_string

    shape = "unknown" if info.shape is None else "[" + ",".join(map(str, info.shape)) + "]"
    return f"{data_type_string(info.dtype)} {shape} (tensor {info.name})"
