"""Numbers as TF Serving writes them (json_tensor.cc WriteDecimal): floats with absl's
six-significant-digit `%g` when that round-trips, else `%.9g` (float) / `%.17g` (double), `.0`
after whole numbers; vectorised for large tensors. Stateless; thread safe.
"""

from __future__ import annotations

import math
import struct
from fractions import Fraction

import numpy as np

# ---------------------------------------------------------------------------------------------
# Numbers as TF Serving writes them (json_tensor.cc WriteDecimal).

FLT_MAX = float(np.finfo(np.float32).max)
_FLT_ROUNDS_TO_INF = 2.0**128 - 2.0**103  # FLT_MAX + half an ulp: rounds to infinity
RAPIDJSON_FLOAT_MAX = 3.4028234e38  # rapidjson Value::IsFloat() bound
_F32 = struct.Struct("<f")
_U32 = struct.Struct("<I")


def to_float32(value: float) -> float:
    """The float32 nearest to a double (ties to even), as a Python float."""
    if not math.isfinite(value):
        return value
    magnitude = abs(value)
    if magnitude >= _FLT_ROUNDS_TO_INF:
        return math.copysign(math.inf, value)
    if magnitude > FLT_MAX:
        return math.copysign(FLT_MAX, value)
    result: float = _F32.unpack(_F32.pack(value))[0]
    return result


def _next_float32(value: float, toward: float) -> float:
    """The float32 next to `value` (a float32) in the direction of `toward`."""
    bits = _U32.unpack(_F32.pack(value))[0]
    if value == 0:
        bits = 1 if toward > 0 else 0x80000001
    elif (toward > value) == (value > 0):
        bits += 1
    else:
        bits -= 1
    result: float = _F32.unpack(_U32.pack(bits))[0]
    return result


def _strtof(text: str) -> float:
    """Correctly rounded decimal -> float32 (absl::SimpleAtof), as a Python float.

    Parsing to double first and then rounding to float32 is exact except when the double
    lands exactly halfway between two float32 values; then the decimal decides exactly.
    """
    double = float(text)
    single = to_float32(double)
    if single == double or not math.isfinite(single):
        return single
    other = _next_float32(single, double)
    if not math.isfinite(other) or 2 * abs(double - single) != abs(other - single):
        return single
    exact = Fraction(text)
    below, above = abs(exact - Fraction(single)), abs(exact - Fraction(other))
    if below != above:
        return single if below < above else other
    return single if _U32.unpack(_F32.pack(single))[0] % 2 == 0 else other


def format_decimal(value: float, single: bool) -> str:
    """One float32 (`single`) or double exactly as TF Serving's WriteDecimal writes it."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    text = format(value, ".6g")  # absl::StrCat(float|double): "%g", six significant digits
    back = _strtof(text) if single else float(text)
    if back != value:
        text = format(value, ".9g" if single else ".17g")  # max_digits10
    if "." not in text and "e" not in text:
        text += ".0"
    return text


_VECTOR_MIN = 48  # below this, numpy's per-call overhead costs more than it saves


_POW10 = np.array([float(f"1e{i}") for i in range(309)])  # correctly rounded powers of ten


def _scaled(values: np.ndarray, powers: np.ndarray) -> np.ndarray:
    """values * 10**powers (|powers| <= 308), dividing for negative powers: 10**k is exact
    for k <= 22, so the usual case is a single correctly rounded operation."""
    factors = _POW10[np.abs(powers)]
    return np.where(powers >= 0, values * factors, values / factors)


def _six_digits_roundtrip(x: np.ndarray, single: bool) -> np.ndarray:
    """Vectorised: does "%.6g" of each value read back as the same float32 / double?

    Computes the six-digit rounding numerically; values where that arithmetic cannot be
    trusted (near a rounding tie, near a float32 midpoint, at extreme exponents, or -- for
    doubles -- anywhere close to the value) are decided by `format_decimal`'s exact method.
    """
    n = x.size
    magnitude = np.abs(x)
    finite = np.isfinite(x)
    with np.errstate(all="ignore"):
        positive = finite & (magnitude > 0)
        safe = positive & (magnitude >= 1e-300) & (magnitude <= 1e300)
        a = np.where(safe, magnitude, 1.0)
        powers = 5 - np.floor(np.log10(a)).astype(np.int64)
        m = _scaled(a, powers)
        powers = np.where(m < 99999.5, powers + 1, np.where(m >= 999999.5, powers - 1, powers))
        m = _scaled(a, powers)
        rounded = np.rint(m)
        tie = np.abs(m - np.floor(m) - 0.5) < 1e-6
        decimal = _scaled(rounded, -powers)
        if single:
            d32 = decimal.astype(np.float32)
            back = d32.astype(np.float64)
            gap_up = np.abs(np.spacing(d32).astype(np.float64))
            gap_down = np.abs(back - np.nextafter(d32, np.float32(0)).astype(np.float64))
            gap = np.where(decimal > back, gap_up, gap_down)
            near_midpoint = np.abs(np.abs(decimal - back) - gap / 2) <= decimal * 2.0**-40
            ok = back == magnitude
            unsure = tie | near_midpoint | (decimal > 3.4e38)
        else:
            ok = np.zeros(n, dtype=bool)
            unsure = tie | (np.abs(decimal - magnitude) <= 8 * np.spacing(magnitude))
    unsure = positive & (unsure | ~safe)
    ok &= positive & ~unsure
    ok |= finite & (magnitude == 0)
    if unsure.any():
        values = x.tolist()
        for i in np.flatnonzero(unsure).tolist():
            text = format(values[i], ".6g")
            ok[i] = (_strtof(text) if single else float(text)) == values[i]
    return ok


def decimal_tokens(flat: np.ndarray) -> list[str]:
    """WriteDecimal text for every value of a 1-D float32 / float64 array."""
    single = flat.dtype == np.float32
    if flat.size < _VECTOR_MIN:
        return [format_decimal(v, single) for v in flat.tolist()]
    with np.errstate(invalid="ignore"):  # signalling NaNs warn when widened
        x = flat.astype(np.float64)
    values = x.tolist()
    finite = np.isfinite(x)
    ok = _six_digits_roundtrip(x, single)
    six = "%.6g".__mod__
    full = ("%.9g" if single else "%.17g").__mod__
    # Format the majority in one C-level map, then patch the minority.
    if np.count_nonzero(ok) * 2 >= x.size:
        tokens = list(map(six, values))
        for i in np.flatnonzero(finite & ~ok).tolist():
            tokens[i] = full(values[i])
    else:
        tokens = list(map(full, values))
        for i in np.flatnonzero(ok).tolist():
            tokens[i] = six(values[i])
    for i in np.flatnonzero(~finite).tolist():
        v = values[i]
        tokens[i] = "NaN" if v != v else ("Infinity" if v > 0 else "-Infinity")
    # "%g" text has neither '.' nor 'e' exactly for whole numbers below 10**precision.
    with np.errstate(invalid="ignore"):
        limit = np.where(ok, 1e6, 1e9 if single else 1e17)
        whole = finite & (np.floor(x) == x) & (np.abs(x) < limit)
    for i in np.flatnonzero(whole).tolist():
        tokens[i] += ".0"
    return tokens
