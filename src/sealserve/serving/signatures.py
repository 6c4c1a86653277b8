"""What a loaded model's signatures look like, as plain values.

The data plane, the JSON codec, the metadata API and the batcher all describe tensors with
these types instead of TensorFlow objects, so that they can be built and tested without a
model. Dtypes are TensorFlow's `DataType` enum names (`DT_FLOAT`, `DT_STRING`, ...), as TF
Serving's APIs spell them. The checks TF Serving makes of a request against a signature live
here too (aliases, output filter); shapes are not checked (the graph decides, as in TF
Serving). Immutable; thread safe.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from sealserve.errors import InvalidArgument

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


def check_aliases(signature: SignatureInfo, aliases: Collection[str]) -> None:
    """TF Serving's checks of a Predict request's input aliases, made before any tensor is
    decoded (`predict_util.cc` VerifyRequestInputsSize, then `GetInputValues`): the count
    first, then each alias. Inputs with defaults may be left out."""
    expected = signature.inputs
    if len(aliases) > len(expected) or (len(aliases) < len(expected) and not signature.defaults):
        sent = set(aliases)
        raise InvalidArgument(
            f"input size does not match signature: {len(aliases)}!={len(expected)} "
            f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(expected))}}}). "
            f"Sent extra: {{{','.join(sorted(sent - set(expected)))}}}. "
            f"Missing but required: {{{','.join(sorted(set(expected) - sent))}}}."
        )
    for alias in aliases:
        if alias not in expected:
            raise InvalidArgument(
                f"input tensor alias not found in signature: {alias}. Inputs expected to be "
                f"in the set {{{','.join(sorted(expected))}}}."
            )


def check_output_filter(signature: SignatureInfo, output_filter: Sequence[str]) -> tuple[str, ...]:
    """The output aliases to answer with (`PreProcessPrediction`): the filter's, each known
    and named once, or all of the signature's."""
    seen: set[str] = set()
    for alias in output_filter:
        if alias not in signature.outputs:
            raise InvalidArgument(
                f"output tensor alias not found in signature: {alias} Outputs expected to "
                f"be in the set {{{','.join(sorted(signature.outputs))}}}."
            )
        if alias in seen:
            raise InvalidArgument(f"duplicate output tensor alias: {alias}")
        seen.add(alias)
    return tuple(output_filter) or tuple(signature.outputs)
