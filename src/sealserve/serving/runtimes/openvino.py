"""The OpenVINO runtime: a SavedModel's signatures converted in memory and run by OpenVINO.

`convert_signatures` has each signature converted in a conversion process of its own
(`conversion`, `openvino_worker`; in this process only where none can start): there
TensorFlow loads the decrypted SavedModel from `ram://`, OpenVINO's TensorFlow frontend
converts each signature's concrete function (`convert_function`: an in-memory graph walk;
no IR, no SavedModel copy, no tracing through files), the CPU plugin compiles it with the
model cache off (`CACHE_DIR` empty), and the compiled model comes back exported, through a
pipe. This process imports it (`_import_compiled`): no plaintext model, IR or compiled blob
is written anywhere, and the server never loads the model into TensorFlow.

Precision is explicit: `INFERENCE_PRECISION_HINT` is f32 unless the model asks for bf16 (the
CPU plugin would otherwise pick bf16 by itself on CPUs with AMX). Before a signature is used,
the accuracy gate compares its outputs with TensorFlow's on the warm-up requests and on
generated inputs (`accuracy.Agreement`; TensorFlow's answers come from the conversion
process); a signature outside the configured bounds refuses the whole model
(InvalidArgument: the version ends with the figures in its status).

A signature OpenVINO cannot convert is listed in `Converted.unconverted` with the operations
it lacks; the loader runs those on TensorFlow (one warning), unless the spec is strict, in
which case the model is refused here.

Memory: a converted signature keeps only its compiled model; TensorFlow's load of the model,
and what TensorFlow keeps for having loaded one (ResNet-50: ~130 MiB), stay in the
conversion process, which exits. Freed heap is handed back to the system (`malloc_trim`)
after the import and again, by the loader (`release_memory`), once warm-up has run.
Signatures left to TensorFlow run on the loader's Session.

Runners are thread safe: each run borrows one of a pool of infer requests (created on
demand, at most `INFER_REQUESTS`), so concurrent requests run in OpenVINO's streams side by
side without a lock around the model; OpenVINO releases the GIL while it infers.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import io
import logging
import queue
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from sealserve.errors import InvalidArgument
from sealserve.serving.memory_load import SavedModelRoot
from sealserve.serving.runtimes import RuntimeSpec
from sealserve.serving.runtimes.accuracy import Agreement
from sealserve.serving.runtimes.conversion import ConversionFailed, ConversionProcess, wipe
from sealserve.serving.runtimes.openvino_worker import (
    ConversionRequest,
    ConversionResult,
    FileSource,
    SignatureConversion,
    read_result,
    write_files,
    write_request,
)
from sealserve.serving.servable import Runner
from sealserve.serving.session_bundle import check_shape, dims_of
from sealserve.serving.tensor_proto import data_type_name, numpy_dtype
from sealserve.serving.tensorflow_runtime import import_tensorflow

log = logging.getLogger(__name__)

INFER_REQUESTS = 8  # per signature: more than the gRPC threads or batch threads that call
# Generated inputs of the accuracy gate: one run per entry, of that many rows where the batch
# dimension is free. Few rows: each costs a TensorFlow and an OpenVINO run at load (ResNet-50:
# ~0.1 s each); a model's warm-up requests, its real inputs, weigh more.
GENERATED_BATCHES = (1, 3)
OPENVINO_TYPES = {"fp32": "f32", "bf16": "bf16"}

# A request to replay: (signature key, inputs by alias)
GateInput = tuple[str, Mapping[str, np.ndarray]]


@dataclass
class Converted:
    """What `convert_signatures` made: runners of the converted signatures, the compiled
    models they run on, and the signatures left to TensorFlow (key -> why)."""

    runners: dict[str, Runner] = field(default_factory=dict)
    compiled: dict[str, Any] = field(default_factory=dict)
    unconverted: dict[str, str] = field(default_factory=dict)
    accuracy: dict[str, Agreement] = field(default_factory=dict)
    precision: str = "fp32"


@functools.cache
def import_openvino() -> ModuleType:
    """The one way sealserve imports OpenVINO. `import openvino` imports its model converter
    `openvino.tools.ovc`, whose import sends a usage event to Google Analytics and writes a
    client id and statistics under $HOME (`openvino_telemetry`: on unless a consent file in
    the host's home directory says otherwise). Neither is used here: with both modules
    blocked, openvino's own `except ImportError` skips the converter, and nothing leaves
    the process."""
    for blocked in ("openvino.tools.ovc", "openvino_telemetry"):
        sys.modules.setdefault(blocked, None)  # type: ignore[arg-type]
    import openvino

    return openvino


@functools.cache
def _core() -> Any:
    """One OpenVINO Core per process (thread safe for compiling and inferring)."""
    return import_openvino().Core()


def bf16_supported() -> bool:
    """Whether this CPU runs bf16 natively (AVX-512 BF16 or AMX), as OpenVINO reports it."""
    return "BF16" in _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def compile_config(precision: str, hint: str) -> dict[str, object]:
    """The CPU plugin's properties, at compile (conversion process) and import (server)."""
    return {
        "INFERENCE_PRECISION_HINT": OPENVINO_TYPES[precision],
        "PERFORMANCE_HINT": hint.upper(),
        # threads not pinned to cores: on a shared machine (or a TEE whose host schedules
        # its vCPUs) a pinned thread waits for its own core while others are free; measured
        # here under load, ResNet-50 bf16 ran 1.45x as fast unpinned
        "ENABLE_CPU_PINNING": False,
    }


def convert_signatures(
    model: str,
    root: SavedModelRoot,
    signature_defs: Mapping[str, Any],
    keys: Sequence[str],
    tags: Sequence[str],
    spec: RuntimeSpec,
    gate_inputs: Sequence[GateInput] = (),
    files: FileSource | None = None,
    process: ConversionProcess | None = None,
) -> Converted:
    """Convert, compile and check signatures `keys` of a SavedModel; `model` names the
    version in messages. With a conversion `process` (started by the loader) the conversion
    runs there, on the SavedModel's `files()`; without, in this process (TensorFlow's
    runtime starts here then), from `root()`. Raises InvalidArgument if the model must be
    refused, ConversionFailed if the conversion process ended without an answer."""
    precision = spec.precision
    if precision == "bf16" and not bf16_supported():
        log.warning("%s: this CPU has no bf16 support; running OpenVINO in fp32", model)
        precision = "fp32"
    converted = Converted(precision=precision)
    cases: dict[str, list[Mapping[str, np.ndarray]]] = {}
    for key in keys:
        if not _numeric(signature_defs[key]):
            continue  # strings: never converted (see _string_operations), nothing to answer
        cases[key] = [inputs for k, inputs in gate_inputs if k == key]
        cases[key] += generated_inputs(signature_defs[key], GENERATED_BATCHES)
    request = ConversionRequest(tags, keys, precision, spec.hint, cases)
    started = time.perf_counter()
    sent = 0.0
    if process is not None and files is not None:
        result, sent = _convert_in(process, request, files)
        where = f"process {process.pid}"
    else:
        with root() as saved_model:
            result = convert_model(saved_model, tags, lambda: request)
        where = "this process"
    seconds = {"send": sent, "conversion": time.perf_counter() - started - sent}
    seconds.update(result.seconds)
    started = time.perf_counter()
    config = compile_config(precision, spec.hint)
    for key in keys:
        signature = result.signatures.get(key)
        if signature is None or signature.blob is None:
            converted.unconverted[key] = signature.reason if signature else "not converted"
            continue
        try:
            compiled = _import_compiled(signature.blob, config)
        except RuntimeError as exc:  # an export this OpenVINO cannot read back
            raise ConversionFailed(
                f"signature {key}: OpenVINO cannot import the compiled model: {_brief(exc)}"
            ) from None
        converted.compiled[key] = compiled
        bindings = _Bindings(signature.inputs, signature.outputs)
        converted.runners[key] = _runner(compiled, bindings, signature_defs[key])
    seconds["import"] = time.perf_counter() - started
    if converted.unconverted and spec.strict:
        key, reason = next(iter(sorted(converted.unconverted.items())))
        raise InvalidArgument(
            f"signature {key} cannot run on OpenVINO ({reason}) and the model's runtime is strict"
        )
    started = time.perf_counter()
    for key in converted.runners:
        converted.accuracy[key] = _check_accuracy(
            model, key, converted.runners[key], cases.get(key, []),
            result.signatures[key].references, spec, precision,
        )  # fmt: skip
    seconds["check"] = time.perf_counter() - started
    seconds["free"] = _return_freed_memory(collect=process is None)
    log.info(
        "%s: OpenVINO %s, converted in %s: %s; resident memory %s",
        model,
        precision,
        where,
        ", ".join(f"{step} {value:.2f} s" for step, value in seconds.items()),
        resident_memory(),
    )
    return converted


def _numeric(signature: Any) -> bool:
    """Whether every tensor of the signature is a number or a bool (not a string)."""
    tensors = [*signature.inputs.values(), *signature.outputs.values()]
    return all(t.dtype != STRING_DTYPE for t in tensors)


def _convert_in(
    process: ConversionProcess, request: ConversionRequest, files: FileSource
) -> tuple[ConversionResult, float]:
    """The conversion process's answer to `request` (the SavedModel's files first, unless
    they went along with the decryption), and the seconds the sending took (the child reads
    once it has imported its libraries)."""
    started = time.perf_counter()
    if not process.files_sent:
        directories, contents = files()
        process.files_sent = True
        process.write(lambda stream: write_files(stream, request.tags, directories, contents))
    process.send(lambda stream: write_request(stream, request))
    sent = time.perf_counter() - started
    return process.receive(read_result), sent


def _import_compiled(blob: io.BytesIO, config: Mapping[str, object]) -> Any:
    """A compiled model from the conversion's export. The CPU plugin reads it into memory of
    its own (a model imported from a tensor would point into the blob's memory instead, and
    crash once Python frees it); the blob, plaintext weights, is wiped afterwards."""
    try:
        return _core().import_model(blob, "CPU", dict(config))
    finally:
        with blob.getbuffer() as view:
            wipe(view)
        blob.close()


def convert_model(
    root: str, tags: Sequence[str], next_request: Callable[[], ConversionRequest]
) -> ConversionResult:
    """In the conversion process (or, where none can start, in the server's): load the
    SavedModel at `root` into TensorFlow, then (`next_request()`: the server prepares it
    meanwhile) convert, compile and export each signature of the request, and answer its
    gate inputs with TensorFlow. Raises InvalidArgument if TensorFlow cannot load the model
    or answer the gate's inputs."""
    tf = import_tensorflow()
    result = ConversionResult()
    seconds = result.seconds
    started = time.perf_counter()
    try:
        loaded = tf.saved_model.load(root, tags=list(tags))
    except (RuntimeError, ValueError, KeyError, OSError, tf.errors.OpError) as exc:
        raise InvalidArgument(f"TensorFlow cannot load the SavedModel: {_brief(exc)}") from None
    seconds["load"] = time.perf_counter() - started
    request = next_request()
    seconds.update(convert=0.0, compile=0.0)
    config = {**compile_config(request.precision, request.hint), "CACHE_DIR": ""}
    # TensorFlow's answers for the accuracy gate are computed in a thread of their own while
    # this one converts and compiles (the frontend's graph walk is Python; TensorFlow runs
    # without the GIL)
    reference_pool = ThreadPoolExecutor(1, "sealserve-ov-reference")
    references: dict[str, Future[list[dict[str, np.ndarray]]]] = {}
    try:
        for key in request.keys:
            function = loaded.signatures.get(key)
            if function is None:
                result.signatures[key] = SignatureConversion(
                    reason="not a function of the SavedModel's object graph"
                )
                continue
            strings = _string_operations(function)
            if strings:
                result.signatures[key] = SignatureConversion(reason=strings)
                continue
            cases = request.cases.get(key, ())
            references[key] = reference_pool.submit(_tensorflow_outputs, function, cases)
            result.signatures[key] = _convert_and_compile(function, config, seconds)
        started = time.perf_counter()
        for key, answers in references.items():
            if result.signatures[key].blob is not None:
                result.signatures[key].references = answers.result()
        seconds["reference"] = time.perf_counter() - started
    finally:
        reference_pool.shutdown(wait=True, cancel_futures=True)
    return result


def _return_freed_memory(collect: bool = True) -> float:
    """Hand the heap freed by the load (the blobs, the frontend's graph where it ran here,
    the accuracy gate's runs) back to the system, and the seconds it took: glibc keeps
    freed memory in its arenas otherwise (ResNet-50: about 50 MB). `collect` first collects
    garbage cycles, which TensorFlow's objects form (0.2-0.5 s with TensorFlow loaded; the
    trim itself takes under a millisecond)."""
    started = time.perf_counter()
    if collect:
        gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return time.perf_counter() - started


def release_memory(compiled: Mapping[str, Any]) -> None:
    """After the load's runs (the accuracy gate's batches, the warm-up requests): let the
    compiled models drop the intermediate buffers those runs sized (serving's first run
    makes its own), and hand the freed heap back to the system."""
    for model in compiled.values():
        model.release_memory()
    _return_freed_memory(collect=False)  # the conversion's cycles were collected already


def resident_memory() -> str:
    """This process's resident memory (VmRSS), for the load's log line ("?" off Linux)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return f"{int(line.split()[1]) // 1024} MiB"
    return "?"


def _convert_and_compile(
    function: Any, config: Mapping[str, object], seconds: dict[str, float]
) -> SignatureConversion:
    """A signature converted, compiled and exported, or the reason it cannot be."""
    try:
        started = time.perf_counter()
        ov_model = convert_function(function)
        inputs = _ports_named(ov_model.inputs, sorted(function.structured_input_signature[1]))
        outputs = _ports_named(ov_model.outputs, sorted(function.structured_outputs))
        if config["INFERENCE_PRECISION_HINT"] == "bf16":
            compress_weights(ov_model)
        seconds["convert"] += time.perf_counter() - started
        started = time.perf_counter()
        compiled = _core().compile_model(ov_model, "CPU", dict(config))
        blob = compiled.export_model()
        seconds["compile"] += time.perf_counter() - started
    except Exception as exc:  # the frontend raises many types; each means "cannot convert"
        return SignatureConversion(reason=unsupported_operations(exc))
    return SignatureConversion(blob=blob, inputs=inputs, outputs=outputs)


def _ports_named(nodes: Sequence[Any], aliases: Sequence[str]) -> tuple[tuple[str, int], ...]:
    """Which port of the converted model each alias is."""
    names = [set(node.get_names()) for node in nodes]
    found = []
    for alias in aliases:
        index = next((i for i, n in enumerate(names) if alias in n), None)
        if index is None:
            raise ValueError(f"the converted model has no port named {alias}")
        found.append((alias, index))
    return tuple(found)


def compress_weights(ov_model: Any) -> None:
    """Store the weights of a model compiled for bf16 as f16 (`compress_model_transformation`,
    what OpenVINO's converter does by default). bf16 inference rounds every weight to bf16's
    8-bit mantissa anyway; f16 keeps 11 bits, so the answers stay as they were (ResNet-50:
    relative error 5.07e-4 against 4.90e-4), while the compiled model keeps half the bytes
    beside the bf16 copy the CPU plugin packs for its kernels (ResNet-50: 105 MB in all
    instead of 159 MB). Weights f16 cannot hold would show in the accuracy gate's figures,
    like any bf16 error."""
    from openvino._offline_transformations import compress_model_transformation

    compress_model_transformation(ov_model)


def convert_function(function: Any) -> Any:
    """An `ov.Model` of a TensorFlow concrete function, through the TensorFlow frontend
    directly: the graph is walked in memory. (`ov.convert_model` does the same, wrapped in
    its telemetry, which would write a client id under the home directory and send usage
    events over the network.) The weights are copied, not shared: shared, they would point
    into TensorFlow's variables, which die with the loaded SavedModel while the compiled
    model may still read them."""
    import_openvino()
    from openvino.frontend import FrontEndManager
    from openvino.frontend.tensorflow.utils import create_tf_graph_iterator

    with _variables_looked_up_once():
        iterator = create_tf_graph_iterator(function, None, None, None, False)
        frontend = FrontEndManager().load_by_framework("tf")
        return frontend.convert(frontend.load(iterator, False))


_conversion = threading.Lock()


@contextlib.contextmanager
def _variables_looked_up_once() -> Iterator[None]:
    """During one conversion, remember what the frontend's `get_variable` found for each
    placeholder. It searches all of the graph's captures and variables, and reads the value
    again, each time it is asked, several times per node: a third of ResNet-50's conversion
    time (OpenVINO 2026.4). The answers are forgotten afterwards (they hold the weights);
    conversions run one at a time (they hold the GIL for most of their work anyway)."""
    from openvino.frontend.tensorflow.node_decoder import TFGraphNodeDecoder

    original = TFGraphNodeDecoder.__dict__["get_variable"]
    found: dict[int, tuple[Any, Any]] = {}

    def get_variable(operation: Any) -> Any:
        known = found.get(id(operation))
        if known is None or known[0] is not operation:
            known = found[id(operation)] = (operation, original.__func__(operation))
        return known[1]

    with _conversion:
        TFGraphNodeDecoder.get_variable = staticmethod(get_variable)
        try:
            yield
        finally:
            TFGraphNodeDecoder.get_variable = original
            found.clear()


STRING_DTYPE = 7  # DT_STRING
_STRING_OPS = re.compile(r"Parse|String|Regex|Decode|Encode|Substr|Reduce?Join|Unicode|Lookup")


def _string_operations(function: Any) -> str:
    """Why a signature with string tensors is not converted ("" if it has none), naming the
    operations on strings: OpenVINO's CPU plugin does not run string tensors, and its
    frontend has been seen to abort the process on some string graphs (TF 2.21, OV 2026.4)
    rather than raise, so such signatures are never handed to it."""
    tf = import_tensorflow()
    graph = function.graph.as_graph_def()
    nodes = [*graph.node, *(n for f in graph.library.function for n in f.node_def)]
    named = sorted({n.op for n in nodes if _STRING_OPS.search(n.op)}) or sorted(
        {n.op for n in nodes if n.op == "Const" and n.attr["dtype"].type == STRING_DTYPE}
    )
    tensors = [*function.inputs, *function.outputs]
    if not named and all(t.dtype != tf.string for t in tensors):
        return ""
    operations = ("op " if len(named) == 1 else "ops ") + ", ".join(named) if named else ""
    return f"{operations or 'string tensors'}: OpenVINO does not run strings"


def unsupported_operations(exc: BaseException) -> str:
    """The operations a conversion error names ("op X, Y"), or its first line."""
    text = str(exc)
    found = re.search(r"No conversion rule found for operations?:\s*([A-Za-z0-9_, ]+)", text)
    if found:
        names = [n.strip() for n in found.group(1).split(",") if n.strip()]
        return ("op " if len(names) == 1 else "ops ") + ", ".join(names)
    return _brief(exc)


@dataclass(frozen=True)
class _Bindings:
    """Which port of the converted model each alias of the signature is."""

    inputs: tuple[tuple[str, int], ...]
    outputs: tuple[tuple[str, int], ...]


@dataclass
class _Slot:
    """An infer request and the input tensors it owns (keyed by port index)."""

    request: Any
    owned: dict[int, Any] = field(default_factory=dict)


class _InferRequests:
    """A pool of infer requests of one compiled model, created on demand."""

    def __init__(self, compiled: Any, limit: int) -> None:
        self._compiled, self._limit, self._made = compiled, limit, 0
        self._idle: queue.LifoQueue[_Slot] = queue.LifoQueue()
        self._lock = threading.Lock()

    def take(self) -> _Slot:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            if self._made < self._limit:
                self._made += 1
                return _Slot(self._compiled.create_infer_request())
        return self._idle.get()

    def give_back(self, slot: _Slot) -> None:
        self._idle.put(slot)


def _runner(compiled: Any, bindings: _Bindings, signature: Any) -> Runner:
    pool = _InferRequests(compiled, INFER_REQUESTS)
    ports = _ports(compiled, bindings.inputs)
    checks = tuple(
        (alias, dims_of(signature.inputs[alias].tensor_shape)) for alias, _ in bindings.inputs
    )
    dtypes = {
        alias: numpy_dtype(data_type_name(signature.outputs[alias].dtype))
        for alias, _ in bindings.outputs
    }

    def run(values: Mapping[str, np.ndarray], quick: bool) -> dict[str, np.ndarray]:
        for alias, dims in checks:
            check_shape(alias, values[alias].shape, dims)
        slot = pool.take()
        try:
            if ports is None:
                feeds = {index: values[alias] for alias, index in bindings.inputs}
                slot.request.infer(feeds, share_inputs=True)
            else:
                _feed(slot, ports, values)
                slot.request.infer()
            # copied out: the request's output tensors are reused by its next run
            results = {
                alias: slot.request.get_output_tensor(index).data.copy()
                for alias, index in bindings.outputs
            }
        except RuntimeError as exc:  # OpenVINO's errors for inputs it cannot run on
            raise InvalidArgument(openvino_message(exc)) from None
        finally:
            pool.give_back(slot)
        # OpenVINO may compute in a narrower type (i32 for i64 indices): answer in the
        # signature's own dtypes, as TensorFlow does
        return {
            alias: array if array.dtype == dtypes[alias] else array.astype(dtypes[alias])
            for alias, array in results.items()
        }

    return run


# (alias, port index, the port's OpenVINO element type, its numpy dtype)
_Port = tuple[str, int, Any, np.dtype]


def _ports(compiled: Any, inputs: Sequence[tuple[str, int]]) -> tuple[_Port, ...] | None:
    """The input ports `_feed` sets, or None if one has a type it leaves to OpenVINO's data
    dispatcher (strings; bf16 and f16, whose numpy views the dispatcher reinterprets)."""
    ports = []
    for alias, index in inputs:
        port_type = compiled.inputs[index].get_element_type()
        if port_type.get_type_name() in ("string", "bf16", "f16"):
            return None
        ports.append((alias, index, port_type, np.dtype(port_type.to_dtype())))
    return tuple(ports)


def _feed(slot: _Slot, ports: Sequence[_Port], values: Mapping[str, np.ndarray]) -> None:
    """Set the request's input tensors. A writable array of the port's type is shared, not
    copied (REST's decoded JSON, batches). A read-only one (gRPC's inputs are views of the
    request's bytes, which OpenVINO cannot share) is copied into a tensor the slot owns and
    reuses, resized in place: OpenVINO's data dispatcher would allocate a fresh tensor for
    each run (ResNet-50: 600 kB; measured, 150-250 us less per run). Shared arrays are
    only ever read, and owned tensors are never a caller's memory, so nothing of one run
    reaches another's arrays."""
    request = slot.request
    for alias, index, port_type, dtype in ports:
        array = values[alias]
        if array.dtype != dtype:  # a port OpenVINO narrowed (i64 -> i32): as the dispatcher
            array = array.astype(dtype)
        if array.flags.writeable and array.flags.c_contiguous:
            tensor = import_openvino().Tensor(array, shared_memory=True)
        else:
            tensor = slot.owned.get(index)
            if tensor is None:
                tensor = slot.owned[index] = import_openvino().Tensor(port_type, array.shape)
            tensor.shape = array.shape
            np.copyto(tensor.data, array)
        request.set_input_tensor(index, tensor)


def generated_inputs(
    signature: Any, batches: Sequence[int], seed: int = 0
) -> list[dict[str, np.ndarray]]:
    """Random inputs fitting `signature`, one set per entry of `batches`: an unknown first
    dimension is that entry, other unknown dimensions 1; floats uniform in [0, 1)
    (image-like), integers in [0, 10). Empty when an input cannot be generated (strings,
    unknown rank). Seeded: a load is repeatable."""
    rng = np.random.default_rng(seed)
    made: list[dict[str, np.ndarray]] = []
    for batch in batches:
        inputs: dict[str, np.ndarray] = {}
        for alias, info in sorted(signature.inputs.items()):
            dims = dims_of(info.tensor_shape)
            try:
                dtype = numpy_dtype(data_type_name(info.dtype))
            except InvalidArgument:
                return []
            if dims is None:
                return []
            shape = tuple((batch if i == 0 else 1) if d is None else d for i, d in enumerate(dims))
            if dtype.kind == "f":
                inputs[alias] = rng.random(shape).astype(dtype)
            elif dtype.kind in "iu":
                inputs[alias] = rng.integers(0, 10, shape).astype(dtype)
            elif dtype.kind == "b":
                inputs[alias] = rng.random(shape) < 0.5
            else:
                return []
        made.append(inputs)
    return made


def _tensorflow_outputs(
    function: Any, cases: Sequence[Mapping[str, np.ndarray]]
) -> list[dict[str, np.ndarray]]:
    """TensorFlow's answers for `cases` (in the conversion process)."""
    tf = import_tensorflow()
    try:
        return [{a: t.numpy() for a, t in function(**inputs).items()} for inputs in cases]
    except (TypeError, ValueError, tf.errors.OpError) as exc:
        raise InvalidArgument(f"TensorFlow cannot run the accuracy check: {_brief(exc)}") from None


def _check_accuracy(
    model: str,
    key: str,
    runner: Runner,
    cases: Sequence[Mapping[str, np.ndarray]],
    references: Sequence[Mapping[str, np.ndarray]],
    spec: RuntimeSpec,
    precision: str,
) -> Agreement:
    """Compare the runner with TensorFlow's `references` of `cases`."""
    max_error, min_agreement = spec.bounds
    agreement = Agreement()
    for inputs, reference in zip(cases, references, strict=True):
        try:
            agreement.add(reference, runner(inputs, False))
        except (ValueError, InvalidArgument) as exc:
            raise InvalidArgument(
                f"signature {key} on OpenVINO {precision} does not answer as TensorFlow: {exc}"
            ) from None
    if agreement.max_relative_error > max_error or agreement.top1_agreement < min_agreement:
        raise InvalidArgument(
            f"signature {key} on OpenVINO {precision} misses the accuracy bounds (max relative "
            f"error {max_error:g}, min top-1 agreement {min_agreement:g}): {agreement.summary()}"
        )
    log.info("%s: signature %s on OpenVINO %s: %s", model, key, precision, agreement.summary())
    return agreement


def openvino_message(exc: BaseException) -> str:
    """What an OpenVINO runtime error says, in one line: its last line that is not one of
    the "Exception from <source file>:<line>:" lines it starts with (e.g. "Batch size is
    zero."), prefixed to say who refused."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    said = [line for line in lines if not line.startswith("Exception from ")]
    return f"OpenVINO cannot run this input: {said[-1] if said else _brief(exc)}"


def _brief(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
