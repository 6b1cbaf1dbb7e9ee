"""Kubernetes resource quantities (`"50"`, `"1k"`, `"2Gi"`, `"500m"`) as exact decimals.

Extended resources such as `tencent.com/vcuda-core` must be whole numbers; `parse_whole`
refuses fractions and negatives with a reason that names the rule.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_SUFFIXES: dict[str, Decimal] = {
    "": Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
}

_QUANTITY = re.compile(
    r"^(?P<number>[+-]?(?:\d+(?:\.\d*)?|\.\d+))"
    r"(?P<suffix>[eE][+-]?\d{1,3}|Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]?)$",
    re.ASCII,
)

# Quantities beyond this are nonsense for a GPU request and would only cost time.
_MAX_DIGITS = 30


class QuantityError(ValueError):
    """A quantity that is not valid for a GPU resource; the message says which rule."""


def parse(value: object) -> Decimal:
    """The exact value of a Kubernetes quantity given as a string or a JSON number."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise QuantityError("it must be a quantity such as 50")
    text = str(value).strip() if not isinstance(value, str) else value.strip()
    if len(text) > _MAX_DIGITS:
        raise QuantityError("it is not a valid quantity")
    match = _QUANTITY.fullmatch(text)
    if match is None:
        raise QuantityError("it is not a valid quantity")
    try:
        number = Decimal(match["number"])
        suffix = match["suffix"]
        if len(suffix) > 1 and suffix[0] in ("e", "E"):  # "E" alone is exa
            return number.scaleb(int(suffix[1:]))
        return number * _SUFFIXES[suffix]
    except (InvalidOperation, KeyError) as err:
        raise QuantityError("it is not a valid quantity") from err


def parse_whole(value: object) -> int:
    """A non-negative whole-number quantity, as extended resources require."""
    number = parse(value)
    if number < 0:
        raise QuantityError("it must not be negative")
    if number != number.to_integral_value():
        raise QuantityError("it must be a whole number")
    return int(number)


def has_binary_suffix(value: object) -> bool:
    """Whether the quantity is written with Ki, Mi, Gi, … (bytes, never a count of units)."""
    return isinstance(value, str) and value.strip()[-2:] in ("Ki", "Mi", "Gi", "Ti", "Pi", "Ei")
