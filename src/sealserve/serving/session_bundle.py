"""A SavedModel in a TensorFlow Session, run the way TF Serving runs it.

TF Serving loads a SavedModel into a `Session` (its `SavedModelBundle`) and runs a signature
with `Session::Run`, feeding and fetching the tensors its `SignatureDef` names. `SessionBundle`
does the same from Python: `tf.compat.v1.saved_model.loader.load` into a Session on a graph
of its own, then one `Session` callable per signature, made once (the feeds and fetches are
fixed), so a call is one trip into C++ that does its work without the GIL. Measured on
half_plus_two: about 25 µs of CPU per call, against 100–160 µs for calling the signature's
`tf.function` through TensorFlow's eager runtime (even directly, see `graph_call`) and
250 µs or more through its public Python call. For large models both run the same kernels.

Shapes are not checked against the signature, as in TF Serving: a fed tensor replaces the
tensor it names and the graph's ops decide (half_plus_two's `x`, the output of an Identity,
declared [?,1], takes [3]); what they reject comes back as TensorFlow's error. A feed into a
placeholder must fit the placeholder's own shape (TensorFlow's rule, see
`check_placeholder_feed`). Dtypes must already match
(`servable.check_request`: a Session would convert silently).
Thread safe: a Session runs callables from many threads at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from sealserve.errors import InvalidArgument
from sealserve.serving.servable import Runner
from sealserve.serving.tensorflow_runtime import import_tensorflow


class SessionBundle:
    """The SavedModel at `root` (any file system TensorFlow knows, `ram://` included),
    loaded into a Session of its own."""

    def __init__(self, root: str, tags: Sequence[str]) -> None:
        tf = import_tensorflow()
        from tensorflow.core.protobuf import config_pb2
        from tensorflow.python.util import deprecation

        config = config_pb2.ConfigProto(
            intra_op_parallelism_threads=tf.config.threading.get_intra_op_parallelism_threads(),
            inter_op_parallelism_threads=tf.config.threading.get_inter_op_parallelism_threads(),
            allow_soft_placement=True,  # graphs exported on a GPU machine run on the CPU
        )
        self._graph = tf.Graph()
        self._session = tf.compat.v1.Session(graph=self._graph, config=config)
        try:
            # the TF1 loader is marked deprecated, and says so on first use: it is what
            # TF Serving's C++ loader does, and it stays in TF 2.x's compat API
            with self._graph.as_default(), deprecation.silence():
                meta_graph = tf.compat.v1.saved_model.loader.load(self._session, list(tags), root)
        except BaseException:
            self._session.close()
            raise
        self.signature_defs: dict[str, Any] = dict(meta_graph.signature_def)
        self._check_variables(tf)

    def _check_variables(self, tf: Any) -> None:
        """ValueError unless the checkpoint restored every variable the graph has. A
        SavedModel written through wrappers (Keras 3 variables saved as they are) can
        checkpoint copies that only TF2's object-graph loader ties back to the variables
        the functions read; in a Session those stay uninitialised."""
        handles = [op.outputs[0] for op in self._graph.get_operations() if op.type == "VarHandleOp"]
        if not handles:
            return
        with self._graph.as_default():
            checks = [tf.raw_ops.VarIsInitializedOp(resource=handle) for handle in handles]
        missing = [
            h.op.get_attr("shared_name")
            for h, ok in zip(handles, self._session.run(checks), strict=True)
            if not ok
        ]
        if missing:
            self._session.close()
            raise ValueError(
                f"{len(missing)} of {len(handles)} variables not restored in a Session, e.g. "
                f"{missing[0].decode(errors='replace')}"
            )

    def runner(self, key: str) -> Runner:
        """A callable running signature `key`: its inputs by alias in, all outputs out.

        Quick runs execute in the caller's thread (`RunOptions.inter_op_thread_pool = -1`),
        others on TensorFlow's inter-op pool, which can run a graph's independent branches
        in parallel. For half_plus_two the caller's thread takes 5 µs of CPU a call instead
        of 30: no handoff to a pool thread and back."""
        from tensorflow.core.protobuf import config_pb2

        signature = self.signature_defs[key]
        inputs = tuple(sorted(signature.inputs))
        outputs = tuple(sorted(signature.outputs))
        options = config_pb2.CallableOptions(
            feed=[signature.inputs[alias].name for alias in inputs],
            fetch=[signature.outputs[alias].name for alias in outputs],
        )
        # each callable costs a graph optimisation (0.5 s for ResNet-50): the one for the
        # caller's thread is made on the first quick run, so slow signatures never pay it
        callables = {False: self._session._make_callable_from_options(options)}
        making = threading.Lock()

        def callable_for(quick: bool) -> Callable[..., list[np.ndarray]]:
            with making:
                if quick not in callables:
                    in_caller = config_pb2.CallableOptions()
                    in_caller.CopyFrom(options)
                    in_caller.run_options.inter_op_thread_pool = -1
                    callables[quick] = self._session._make_callable_from_options(in_caller)
                return callables[quick]

        placeholders = tuple(
            (alias, name, dims)
            for alias in inputs
            if (found := self._placeholder_dims(signature.inputs[alias].name)) is not None
            for name, dims in (found,)
        )

        def run(values: Mapping[str, np.ndarray], quick: bool) -> dict[str, np.ndarray]:
            for alias, name, dims in placeholders:
                check_placeholder_feed(name, values[alias].shape, dims)
            call = callables.get(quick) or callable_for(quick)
            results = call(*(values[alias] for alias in inputs))
            return dict(zip(outputs, results, strict=True))

        return run

    def _placeholder_dims(self, tensor_name: str) -> tuple[str, tuple[int | None, ...]] | None:
        """(name, dims) when the tensor is a placeholder's output with a known rank."""
        tensor = self._graph.get_tensor_by_name(tensor_name)
        if tensor.op.type not in ("Placeholder", "PlaceholderWithDefault"):
            return None
        if tensor.shape.rank is None:
            return None
        return tensor.name, tuple(tensor.shape.as_list())

    def close(self) -> None:
        self._session.close()


def check_placeholder_feed(name: str, shape: tuple[int, ...], dims: tuple[int | None, ...]) -> None:
    """TensorFlow's own rule for feeding a placeholder (its `Session.run` checks it): the
    value must fit the placeholder's declared shape. Graphs are optimised and kernels chosen
    for that shape; oneDNN's convolution aborts the process on a tensor of another rank."""
    if len(shape) != len(dims) or any(
        want is not None and want != got for got, want in zip(shape, dims, strict=True)
    ):
        declared = "(" + ", ".join("None" if d is None else str(d) for d in dims) + ")"
        raise InvalidArgument(
            f"Cannot feed value of shape {tuple(shape)} for Tensor {name}, which has shape "
            f"{declared}"
        )


def check_shape(alias: str, shape: tuple[int, ...], dims: tuple[int | None, ...] | None) -> None:
    """InvalidArgument unless `shape` fits the signature's `dims` (None: any; a None
    dimension: any size), for runtimes that hold only for their signature's shapes (a traced
    function, whose own call checks them too; OpenVINO). A Session does not use it."""
    if dims is None:
        return
    if len(shape) != len(dims) or any(
        want is not None and want != got for got, want in zip(shape, dims, strict=True)
    ):
        raise InvalidArgument(
            f"input '{alias}' has shape {_shape_text(shape)}; the signature takes "
            f"{_shape_text(dims)}"
        )


def dims_of(proto: Any) -> tuple[int | None, ...] | None:
    if proto.unknown_rank:
        return None
    return tuple(None if d.size < 0 else int(d.size) for d in proto.dim)


def _shape_text(dims: Sequence[int | None]) -> str:
    return "[" + ",".join("?" if d is None else str(d) for d in dims) + "]"
