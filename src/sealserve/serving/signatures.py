"""What a loaded model's signatures look like, as plain values.

The data plane, the JSON codec, the metadata API and the batcher all describe tensors with
these types instead of TensorFlow objects, so that they can be built and tested without a
model. Dtypes are TensorFlow's `DataType` enum names (`DT_FLOAT`, `DT_STRING`, ...), as TF
Serving's APIs spell them. Immutable; thread safe.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
DEFAULT_SIGNATURE = "serving_default"


@dataclass(frozen=True)
class TensorInfo:
    """One input or output of a signature.

    `name` is the graph tensor name (e.g. `x:0`), `dtype` a DataType name, `shape` the
    dimensions with -1 for unknown sizes, or None when even the rank is unknown.
    """

    name: str
    dtype: str
    shape: tuple[int, ...] | None


@dataclass(frozen=True)
class SignatureInfo:
    """A signature: its inputs and outputs by alias, in a stable (sorted) order."""

    inputs: dict[str, TensorInfo]
    outputs: dict[str, TensorInfo]
    method_name: str = PREDICT_METHOD
    defaults: dict[str, object] = field(default_factory=dict)
