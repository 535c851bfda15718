"""JavaScript value semantics over JSON-shaped Python values.

Workflow blueprints come from the TypeScript engine, whose conditions, transforms and input
paths follow JavaScript rules. Values here are what JSON decodes to (``None`` is ``null``,
``dict``, ``list``, ``str``, ``int``/``float``, ``bool``) plus :data:`UNDEFINED` for a missing
value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Final


class _Undefined:
    """JavaScript ``undefined``: a missing key, an out-of-range index, a failed read."""

    _instance: _Undefined | None = None

    def __new__(cls) -> _Undefined:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "undefined"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self) -> str:
        return "UNDEFINED"


UNDEFINED: Final = _Undefined()

_ARRAY_INDEX_MAX: Final = 2**32 - 2
_MAX_SAFE_INTEGER: Final = 2**53


def is_number(value: object) -> bool:
    """True for JS numbers: ``int`` and ``float`` but not ``bool``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def truthy(value: object) -> bool:
    """JavaScript truthiness: ``[]``, ``{}``, ``"0"`` and ``"false"`` are truthy."""
    if value is UNDEFINED or value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return not (value == 0 or (isinstance(value, float) and math.isnan(value)))
    if isinstance(value, str):
        return value != ""
    return True


def typeof(value: object) -> str:
    """The JavaScript ``typeof`` of a JSON-shaped value."""
    if value is UNDEFINED:
        return "undefined"
    if isinstance(value, bool):
        return "boolean"
    if is_number(value):
        return "number"
    if isinstance(value, str):
        return "string"
    return "object"


def array_index(key: str) -> int | None:
    """The index a property key names on an array or string, or None (canonical form only)."""
    if not key or not key.isascii() or not key.isdigit():
        return None
    if len(key) > 1 and key[0] == "0":
        return None
    index = int(key)
    return index if index <= _ARRAY_INDEX_MAX else None


def get_property(obj: object, key: object) -> object:
    """Read ``obj[key]`` the way JavaScript does for JSON values.

    Arrays and strings expose ``length`` and numeric indices (strings count UTF-16 code units);
    objects expose their own keys. Reading from ``null`` or ``undefined`` raises
    :class:`JSTypeError`, as JavaScript throws.
    """
    if obj is UNDEFINED or obj is None:
        raise JSTypeError(
            f"Cannot read properties of {to_display(obj)} (reading '{to_string(key)}')"
        )
    name = key if isinstance(key, str) else to_property_key(key)
    if isinstance(obj, Mapping):
        return obj.get(name, UNDEFINED)
    if isinstance(obj, str) and not obj.isascii():
        obj = utf16_units(obj)
    if isinstance(obj, (list, tuple, str)):
        if name == "length":
            return len(obj)
        index = array_index(name)
        if index is not None and index < len(obj):
            return obj[index]
        return UNDEFINED
    return UNDEFINED


_ASTRAL: Final = re.compile("[\U00010000-\U0010ffff]")


def utf16_units(text: str) -> str:
    """``text`` with each astral character split into its surrogate pair, one char per code unit."""
    return _ASTRAL.sub(_surrogate_pair, text)


def _surrogate_pair(match: re.Match[str]) -> str:
    offset = ord(match.group()) - 0x10000
    return chr(0xD800 + (offset >> 10)) + chr(0xDC00 + (offset & 0x3FF))


def to_property_key(key: object) -> str:
    """Convert a computed member key (``a[k]``) to the string JavaScript uses."""
    return to_string(key)


class JSTypeError(Exception):
    """A JavaScript ``TypeError`` raised while evaluating an expression."""


def to_display(value: object) -> str:
    return "undefined" if value is UNDEFINED else "null" if value is None else to_string(value)


def number_to_string(value: float | int) -> str:
    """Format a number as JavaScript's ``Number.prototype.toString`` does."""
    if isinstance(value, int) and abs(value) <= _MAX_SAFE_INTEGER:
        return str(value)
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "0"
    sign = "-" if value < 0 else ""
    digits, point = _shortest_digits(abs(value))
    if len(digits) <= point <= 21:
        return sign + digits + "0" * (point - len(digits))
    if 0 < point <= 21:
        return f"{sign}{digits[:point]}.{digits[point:]}"
    if -6 < point <= 0:
        return f"{sign}0.{'0' * -point}{digits}"
    exponent = point - 1
    mantissa = digits if len(digits) == 1 else f"{digits[0]}.{digits[1:]}"
    return f"{sign}{mantissa}e{'+' if exponent >= 0 else '-'}{abs(exponent)}"


def _shortest_digits(value: float) -> tuple[str, int]:
    """The shortest round-trip digits ``d`` of a positive float and ``n`` with value = 0.d × 10ⁿ."""
    mantissa, _, exponent = repr(value).partition("e")
    whole, _, fraction = mantissa.partition(".")
    raw = whole + fraction
    significant = raw.lstrip("0")
    point = len(whole) + int(exponent or "0") - (len(raw) - len(significant))
    return significant.rstrip("0"), point


def to_string(value: object) -> str:
    """JavaScript ``String(value)`` for JSON-shaped values."""
    if value is UNDEFINED:
        return "undefined"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if is_number(value):
        return number_to_string(value)  # type: ignore[arg-type]
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return ",".join("" if v is None or v is UNDEFINED else to_string(v) for v in value)
    return "[object Object]"


def to_number(value: object) -> float | int:
    """JavaScript ``Number(value)`` for JSON-shaped values."""
    if value is UNDEFINED:
        return math.nan
    if value is None:
        return 0
    if isinstance(value, bool):
        return 1 if value else 0
    if is_number(value):
        return value  # type: ignore[return-value]
    if isinstance(value, str):
        return _string_to_number(value)
    if isinstance(value, (list, tuple)):
        return _string_to_number(to_string(value))
    return math.nan


WHITESPACE: Final = (
    " \t\n\r\v\f\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000\ufeff"
)
"""JavaScript ``WhiteSpace`` and ``LineTerminator`` characters."""

_RADIX_DIGITS: Final = {"x": (16, "0123456789abcdef"), "o": (8, "01234567"), "b": (2, "01")}


def _string_to_number(text: str) -> float | int:
    stripped = text.strip(WHITESPACE)
    if stripped == "":
        return 0
    lowered = stripped.lower()
    if lowered[:2] in ("0x", "0o", "0b") and len(stripped) > 2:
        base, allowed = _RADIX_DIGITS[lowered[1]]
        if not all(c in allowed for c in lowered[2:]):
            return math.nan
        return _int_or_float(int(lowered[2:], base))
    if stripped in ("Infinity", "+Infinity"):
        return math.inf
    if stripped == "-Infinity":
        return -math.inf
    if not all(c in "0123456789+-.eE" for c in stripped):
        return math.nan
    try:
        number = float(stripped)
    except ValueError:
        return math.nan
    return int(number) if number.is_integer() and abs(number) < 2**53 else number


def to_primitive(value: object) -> object:
    """JavaScript ``ToPrimitive`` with the default hint, for JSON-shaped values."""
    if isinstance(value, (list, tuple, Mapping)):
        return to_string(value)
    return value


def strict_equals(left: object, right: object) -> bool:
    """JavaScript ``===``: same type and value; objects compare by identity; NaN never equal."""
    if left is UNDEFINED or right is UNDEFINED:
        return left is right
    if left is None or right is None:
        return left is right
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left == right
    if is_number(left) and is_number(right):
        return bool(left == right)
    if isinstance(left, str) and isinstance(right, str):
        return left == right
    return left is right


def loose_equals(left: object, right: object) -> bool:
    """JavaScript ``==`` (abstract equality) for JSON-shaped values."""
    left_nullish = left is None or left is UNDEFINED
    right_nullish = right is None or right is UNDEFINED
    if left_nullish or right_nullish:
        return left_nullish and right_nullish
    if typeof(left) == typeof(right):
        return strict_equals(left, right)
    if isinstance(left, bool):
        return loose_equals(to_number(left), right)
    if isinstance(right, bool):
        return loose_equals(left, to_number(right))
    if is_number(left) and isinstance(right, str):
        return strict_equals(left, to_number(right))
    if isinstance(left, str) and is_number(right):
        return strict_equals(to_number(left), right)
    if typeof(left) == "object" and typeof(right) != "object":
        return loose_equals(to_primitive(left), right)
    if typeof(right) == "object" and typeof(left) != "object":
        return loose_equals(left, to_primitive(right))
    return False


def compare(left: object, right: object, op: str) -> bool:
    """JavaScript relational comparison (``<``, ``<=``, ``>``, ``>=``)."""
    lp, rp = to_primitive(left), to_primitive(right)
    if isinstance(lp, str) and isinstance(rp, str):
        return _apply_relational(utf16_units(lp), utf16_units(rp), op)
    ln, rn = to_number(lp), to_number(rp)
    if math.isnan(ln) or math.isnan(rn):
        return False
    return _apply_relational(ln, rn, op)


def _apply_relational(a: Any, b: Any, op: str) -> bool:
    if op == "<":
        return bool(a < b)
    if op == "<=":
        return bool(a <= b)
    if op == ">":
        return bool(a > b)
    if op == ">=":
        return bool(a >= b)
    raise ValueError(f"not a relational operator: {op}")


def normalize_number(value: float | int) -> float | int:
    """Represent integral results as ``int`` so ``3`` stays ``3`` in JSON, as in JavaScript."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def add(left: object, right: object) -> object:
    """JavaScript binary ``+``: concatenation if either side is a string after ToPrimitive."""
    lp, rp = to_primitive(left), to_primitive(right)
    if isinstance(lp, str) or isinstance(rp, str):
        return to_string(lp) + to_string(rp)
    return normalize_number(_float_op(to_number(lp), to_number(rp), "+"))


def arithmetic(left: object, right: object, op: str) -> float | int:
    """JavaScript ``-``, ``*``, ``/`` and ``%`` with IEEE-754 results (Infinity, NaN)."""
    return normalize_number(_float_op(to_number(left), to_number(right), op))


def _float_op(a: float | int, b: float | int, op: str) -> float | int:
    if op == "+":
        return a + b if not (isinstance(a, int) and isinstance(b, int)) else _int_or_float(a + b)
    if op == "-":
        return a - b if not (isinstance(a, int) and isinstance(b, int)) else _int_or_float(a - b)
    if op == "*":
        if isinstance(a, int) and isinstance(b, int):
            return _int_or_float(a * b)
        if (math.isinf(a) and b == 0) or (math.isinf(b) and a == 0):
            return math.nan
        return float(a) * float(b)
    if op == "/":
        if b == 0:
            if a == 0 or math.isnan(a):
                return math.nan
            negative = (a < 0) != (math.copysign(1.0, float(b)) < 0)
            return -math.inf if negative else math.inf
        return float(a) / float(b)
    if op == "%":
        if b == 0 or math.isinf(a) or math.isnan(a) or math.isnan(b):
            return math.nan
        if math.isinf(b):
            return a
        return math.fmod(a, b)
    raise ValueError(f"not an arithmetic operator: {op}")


def _int_or_float(value: int) -> float | int:
    return value if abs(value) <= _MAX_SAFE_INTEGER else float(value)
