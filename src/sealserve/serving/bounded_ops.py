"""Which signatures' runs cost no more than their inputs' sizes say: those that may be run
inline, in grpc's poller thread or on REST's event loop, where a long run stalls every other
call of the server.

A signature is run inline only once its recent runs were quick (`Servable.quick`), but a
quick run says nothing of the next one when the work depends on the input's values: a loop
whose count is an input, a tensor filled to a shape read from an input, a Python function.
A requester who found one could send a quick signature an input that keeps it running for
minutes. So a signature is `bounded` only if every op it can reach (through the functions it
calls, as TF2 SavedModels do) is one whose work and output are bounded by the sizes of its
inputs and the model's constants, from the list below; any other op, or a graph we cannot
read, makes its signature never inline: it only loses the speed of the inline path.

Read from the SavedModel's MetaGraphDef (TensorFlow's protos; no TensorFlow runtime), so it
holds for every runtime that runs the graph, OpenVINO's too.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

# Ops whose work and output sizes are bounded by their inputs' sizes and the model's own
# constants (never by an input's values): elementwise math, contractions, reductions, and
# moving data around without growing it. Not here, e.g.: While, If, Case, Fill, Range, Tile,
# BroadcastTo, Pad, OneHot, resize, random ops, PyFunc, anything with a shape input.
BOUNDED_OPS = frozenset(
    {
        # graph plumbing, variables, constants
        "Const", "Placeholder", "PlaceholderWithDefault", "Identity", "IdentityN", "NoOp",
        "VarHandleOp", "ReadVariableOp", "VariableV2", "Variable", "StopGradient",
        "PartitionedCall", "StatefulPartitionedCall",  # what they call is checked too
        # elementwise
        "Abs", "Add", "AddV2", "AddN", "BiasAdd", "Cast", "Ceil", "Cos", "Div", "DivNoNan",
        "Elu", "Equal", "Erf", "Exp", "Floor", "FloorDiv", "FloorMod", "Gelu", "Greater",
        "GreaterEqual", "IsFinite", "IsNan", "LeakyRelu", "Less", "LessEqual", "Log", "Log1p",
        "LogicalAnd", "LogicalNot", "LogicalOr", "Maximum", "Minimum", "Mod", "Mul",
        "MulNoNan", "Neg", "NotEqual", "Pow", "RealDiv", "Reciprocal", "Relu", "Relu6",
        "Round", "Rsqrt", "Select", "SelectV2", "Selu", "Sigmoid", "Sign", "Sin", "Softplus",
        "Softsign", "Sqrt", "Square", "SquaredDifference", "Sub", "Tanh", "TruncateDiv",
        "ClipByValue",
        # contractions, normalisation, pooling
        "MatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3", "Conv2D", "Conv3D",
        "DepthwiseConv2dNative", "FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3",
        "AvgPool", "MaxPool", "MaxPoolV2", "AvgPool3D", "MaxPool3D", "Softmax", "LogSoftmax",
        "_FusedConv2D", "_FusedMatMul", "Einsum",
        # reductions
        "All", "Any", "ArgMax", "ArgMin", "Max", "Mean", "Min", "Prod", "Sum", "TopKV2",
        # shapes and data movement (no output larger than an input)
        "ConcatV2", "Concat", "ExpandDims", "GatherV2", "Gather", "GatherNd", "Pack", "Rank",
        "Reshape", "Shape", "ShapeN", "Size", "Slice", "Split", "SplitV", "Squeeze",
        "StridedSlice", "Transpose", "Unpack", "Reverse", "ReverseV2",
        # strings, one output element per input element
        "AsString", "StringJoin", "Substr", "StringLength", "StringToNumber",
        "RegexFullMatch", "DecodeBase64", "EncodeBase64", "StringUpper", "StringLower",
        "StringStrip",
        # tf.Examples: dense features of fixed shapes, sparse ones no larger than the input
        "ParseExample", "ParseExampleV2", "ParseSingleExample",
    }
)  # fmt: skip


def bounded_signatures(meta_graph: Any) -> frozenset[str]:
    """The keys of `meta_graph`'s signatures (a MetaGraphDef) whose every op that runs, from
    their fed inputs to their outputs, is in `BOUNDED_OPS`."""
    nodes = {node.name: node for node in meta_graph.graph_def.node}
    functions = {f.signature.name: f for f in meta_graph.graph_def.library.function}
    bounded = set()
    for key, signature in meta_graph.signature_def.items():
        fed = {_tensor(t.name) for t in signature.inputs.values()}
        outputs = [_tensor(t.name) for t in signature.outputs.values()]
        try:
            ops = set(_reachable_ops(outputs, fed, nodes, functions))
        except KeyError:  # a name the graph does not have: unreadable, never inline
            continue
        if ops <= BOUNDED_OPS:
            bounded.add(key)
    return frozenset(bounded)


def _reachable_ops(
    outputs: list[str], fed: set[str], nodes: dict[str, Any], functions: dict[str, Any]
) -> Iterator[str]:
    """The op types of every node that runs to compute `outputs` when the tensors `fed` are
    given (the graph is cut there, as a Session cuts it), and of every node of every function
    those nodes call, however deep (each function looked into once; no recursion, so a
    graph's nesting cannot exhaust the stack)."""
    seen: set[str] = set()
    pending = [t for t in outputs if t not in fed]
    running = []
    while pending:
        name = pending.pop().lstrip("^").split(":", 1)[0]
        if name not in seen:
            seen.add(name)
            running.append(nodes[name])
            pending.extend(t for t in map(_tensor, nodes[name].input) if t not in fed)
    called: set[str] = set()
    while running:
        node = running.pop()
        if node.op not in functions:  # a call of a function: its nodes are what runs
            yield node.op
        for function in _called(node, functions):
            if function not in called:
                called.add(function)
                running.extend(functions[function].node_def)  # its every node


def _called(node: Any, functions: dict[str, Any]) -> Iterator[str]:
    """The functions a node calls: its function-valued attributes, and an op that is itself
    a function of the library."""
    if node.op in functions:
        yield node.op
    for value in node.attr.values():
        if value.HasField("func"):
            yield value.func.name
        yield from (f.name for f in value.list.func)


def _tensor(name: str) -> str:
    """A graph's tensor name as a Session feeds it: "name" -> "name:0"; "^name" (a control
    input: the node runs, none of its outputs is fed) stays."""
    return name if name.startswith("^") or ":" in name else f"{name}:0"


__all__ = ["BOUNDED_OPS", "bounded_signatures"]
