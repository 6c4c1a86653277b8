"""Run a loaded signature's graph function directly: the eager execute of TensorFlow's C API.

The fallback runner, for SavedModels that TensorFlow's TF1 loader cannot load into a Session
(see `session_bundle`, the normal path), loaded with `tf.saved_model.load` instead.

Calling a signature the public way (`loaded.signatures[key](**inputs)`) spends about 250 µs
of Python per call binding the structured signature, converting numpy to tensors and
repacking the outputs, most of it holding the GIL: for small models, that is most of a
request's cost and caps a process at a few thousand calls per second. The function itself
is one `TFE_Py_Execute` of the graph function by name with its inputs and captured variables
(what `ConcreteFunction._call_flat` ends in), about 45 µs for half_plus_two, run without the
GIL. `GraphCall` precomputes everything the public path recomputes per call: the flat order
of the inputs, the captured variables, the call attributes and the output aliases.

These are TensorFlow internals (stable since TF 2.12, checked with 2.21), so `build` checks
each one and returns None when anything is not as expected; the caller then keeps the public
path. Shapes are checked here against the signature's TensorSpecs, as the public path does.
Thread safe, like the public call.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from sealserve.serving.session_bundle import check_shape

log = logging.getLogger(__name__)


class GraphCall:
    def __init__(
        self,
        function_name: str,
        input_aliases: tuple[str, ...],
        input_specs: tuple[tuple[int, tuple[int | None, ...] | None], ...],
        captures: list[Any],
        output_aliases: tuple[str, ...],
        attrs: tuple[Any, ...],
        context: Any,
    ) -> None:
        from tensorflow.python import pywrap_tfe
        from tensorflow.python.eager import core
        from tensorflow.python.framework import ops

        self._execute = pywrap_tfe.TFE_Py_Execute
        self._not_ok = core._NotOkStatusException
        self._to_exception = core._status_to_exception
        self._eager_tensor = ops.EagerTensor
        self._name = function_name
        self._inputs = tuple(zip(input_aliases, input_specs, strict=True))
        self._captures = captures
        self._outputs = output_aliases
        self._attrs = attrs
        self._context = context

    @classmethod
    def build(cls, function: Any) -> GraphCall | None:
        """A direct call of a loaded signature `function`, or None where its internals differ
        from what this module knows (then the public call is used)."""
        try:
            return cls._build(function)
        except Exception as exc:  # internals changed: fall back, but say so
            log.warning("signature fast path unavailable (%s: %s)", type(exc).__name__, exc)
            return None

    @classmethod
    def _build(cls, function: Any) -> GraphCall | None:
        from tensorflow.python.eager import context as eager_context

        args, kwargs = function.structured_input_signature
        aliases = tuple(function._arg_keywords)
        captures = list(function.captured_inputs)
        outputs = function.structured_outputs
        if (
            args
            or not isinstance(kwargs, Mapping)
            or sorted(aliases) != sorted(kwargs)
            or function._num_positional_args != len(aliases)
            or len(function.inputs) != len(aliases) + len(captures)
            or not isinstance(outputs, Mapping)
            or len(function.outputs) != len(outputs)
            or not all(hasattr(value, "dtype") for value in outputs.values())
        ):
            return None
        specs = []
        for alias in aliases:
            spec = kwargs[alias]
            shape = spec.shape
            dims = None if shape.rank is None else tuple(shape.as_list())
            specs.append((spec.dtype.as_datatype_enum, dims))
        context = eager_context.context()
        context.ensure_initialized()
        # the attributes `Context.call_function` sends: executor type and session config
        attrs = tuple(itertools.chain(*context.function_call_options.as_attrs().items()))
        name = function._inference_function.name
        return cls(
            name.decode() if isinstance(name, bytes) else str(name),
            aliases,
            tuple(specs),
            captures,
            tuple(sorted(outputs)),  # the flat order of a dict structure: sorted keys
            attrs,
            context,
        )

    def __call__(
        self, inputs: Mapping[str, np.ndarray], quick: bool = False
    ) -> dict[str, np.ndarray]:
        device = self._context.device_name
        tensors = []
        for alias, (dtype, dims) in self._inputs:
            array = inputs[alias]
            check_shape(alias, array.shape, dims)
            tensors.append(self._eager_tensor(array, device, dtype))
        tensors.extend(self._captures)
        try:
            results = self._execute(
                self._context._handle, device, self._name, tensors, self._attrs, len(self._outputs)
            )
        except self._not_ok as exc:  # as `execute.execute`: the tf.errors.OpError it stands for
            raise self._to_exception(exc) from None
        return {alias: result.numpy() for alias, result in zip(self._outputs, results, strict=True)}
