"""The one check for numeric settings (prices, budgets, limits, timeouts, retry and breaker policies). Pure.

Python lets through what a setting cannot mean: `nan` compares False with everything (so `nan <= 0` passes a
"positive" check), `inf` is a number, `True` is an int, and `int(0.5)` is a limit of 0. Every numeric setting of
flock_llm goes through `number()`, which refuses these with a ConfigurationError naming the setting, the value
and the fix.
"""

from __future__ import annotations

import math
from typing import Literal

from .errors import ConfigurationError

__all__ = ["number", "optional_number"]

Bound = Literal["positive", "non_negative"]


def number(
    name: str,
    value: object,
    *,
    bound: Bound = "positive",
    integer: bool = False,
    unit: str = "",
    fix: str = "",
) -> float:
    """`value` as a float when it is a real, finite number within `bound` (a whole number with `integer`).

    Args:
        name: the setting, as the user writes it (shown in backticks).
        unit: what the number counts ("seconds", "US dollars", ...), for the message.
        fix: what to pass instead, appended to the message.

    Raises:
        ConfigurationError: a bool, a non-number, NaN, an infinity, a value outside `bound`, or (with `integer`)
            a fraction.
    """
    what = ("a whole number" if integer else "a number") + (f" of {unit}" if unit else "")
    limit = "> 0" if bound == "positive" else ">= 0"
    hint = f"; {fix}" if fix else ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"`{name}` must be {what} {limit}, got {value!r} ({type(value).__name__}){hint}")
    as_float = float(value)
    if not math.isfinite(as_float):
        raise ConfigurationError(f"`{name}` must be a finite number {limit}, got {value!r}{hint}")
    if as_float < 0 or (bound == "positive" and as_float == 0):
        raise ConfigurationError(f"`{name}` must be {what} {limit}, got {value!r}{hint}")
    if integer and not as_float.is_integer():
        raise ConfigurationError(
            f"`{name}` must be {what} {limit}, got {value!r} (it would be cut to {int(as_float)}){hint}"
        )
    return as_float


def optional_number(
    name: str,
    value: object,
    *,
    bound: Bound = "positive",
    integer: bool = False,
    unit: str = "",
    fix: str = "",
) -> float | None:
    """`number()` for a setting where None means "no limit"."""
    if value is None:
        return None
    return number(name, value, bound=bound, integer=integer, unit=unit, fix=fix)
