"""Which runtime runs a model's signatures, and with what settings: `RuntimeSpec`.

A model runs on TensorFlow (the default, as TF Serving) or on OpenVINO. The choice is TF
Serving's own `model_platform` field of the model config, or `--runtime` for the single model
of `--model_base_path`; both take the same text:

    tensorflow
    openvino[:OPTION[,OPTION...]]

with OPTIONs `fp32` (the default) or `bf16` (the inference precision), `strict` (refuse the
model when a signature cannot be converted, instead of running that signature on TensorFlow),
`latency` (the default) or `throughput` (OpenVINO's performance hint), and the accuracy bounds
checked at load, `max_relative_error=F` and `min_top1_agreement=F` (defaults per precision
below). Parsing is pure; nothing here imports TensorFlow or OpenVINO. Values are immutable.
"""

from __future__ import annotations

from dataclasses import dataclass

from sealserve.errors import InvalidArgument

TENSORFLOW = "tensorflow"
OPENVINO = "openvino"
PRECISIONS = ("fp32", "bf16")
HINTS = ("latency", "throughput")

# Accuracy bounds at load, per precision: (max relative error, min top-1 agreement). fp32
# must match TensorFlow to 1e-4 of each output's scale (the bound; measured: 1e-6 and
# below); bf16 keeps 8 bits of mantissa, so outputs move by a few percent of their scale
# (ResNet-50: about 1-3 %), and the top class may change where two classes are nearly tied.
DEFAULT_BOUNDS = {"fp32": (1e-4, 1.0), "bf16": (0.1, 0.9)}


@dataclass(frozen=True)
class RuntimeSpec:
    platform: str = TENSORFLOW
    precision: str = "fp32"
    strict: bool = False
    hint: str = "latency"
    max_relative_error: float | None = None  # None: DEFAULT_BOUNDS for the precision
    min_top1_agreement: float | None = None

    @property
    def bounds(self) -> tuple[float, float]:
        """(max relative error, min top-1 agreement) that the load checks."""
        default_error, default_agreement = DEFAULT_BOUNDS[self.precision]
        return (
            default_error if self.max_relative_error is None else self.max_relative_error,
            default_agreement if self.min_top1_agreement is None else self.min_top1_agreement,
        )

    @property
    def label(self) -> str:
        """The `runtime` label of the runtime_latency metric (TF Serving says TF1 or TFRT)."""
        return "OpenVINO" if self.platform == OPENVINO else "TF"

    def __str__(self) -> str:
        if self.platform == TENSORFLOW:
            return TENSORFLOW
        options = [self.precision, self.hint] + (["strict"] if self.strict else [])
        error, agreement = self.bounds
        options += [f"max_relative_error={error:g}", f"min_top1_agreement={agreement:g}"]
        return f"{OPENVINO}:{','.join(options)}"


DEFAULT_RUNTIME = RuntimeSpec()


def parse_runtime(text: str, source: str = "--runtime") -> RuntimeSpec:
    """A `RuntimeSpec` from `model_platform` / `--runtime` text ("" means TensorFlow)."""
    platform, _, options = text.strip().partition(":")
    platform = platform.strip().lower()
    if platform in ("", TENSORFLOW):
        if options.strip():
            raise InvalidArgument(f"{source}: the tensorflow runtime takes no options")
        return DEFAULT_RUNTIME
    if platform != OPENVINO:
        raise InvalidArgument(
            f"{source}: unsupported model platform {platform!r} (tensorflow or openvino)"
        )
    settings: dict[str, object] = {"platform": OPENVINO}
    for option in (o.strip() for o in options.split(",") if o.strip()):
        name, equals, value = option.partition("=")
        if not equals and name in PRECISIONS:
            settings["precision"] = name
        elif not equals and name in HINTS:
            settings["hint"] = name
        elif not equals and name == "strict":
            settings["strict"] = True
        elif equals and name in ("max_relative_error", "min_top1_agreement"):
            settings[name] = _fraction(value, name, source)
        else:
            raise InvalidArgument(
                f"{source}: unknown openvino option {option!r} (fp32, bf16, strict, latency, "
                "throughput, max_relative_error=F, min_top1_agreement=F)"
            )
    return RuntimeSpec(**settings)  # type: ignore[arg-type]


def _fraction(value: str, name: str, source: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not 0.0 <= number <= 1.0:
        raise InvalidArgument(f"{source}: {name} must be a number from 0 to 1, got {value!r}")
    return number
