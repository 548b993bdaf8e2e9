"""Validation of numeric settings: every number a user gives is finite and in range, or the
error names the flag, the value and what is allowed."""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

from .errors import GraspError


def check_number(flag: str, value: Any, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, integer: bool = False) -> None:
    """Raise GraspError unless ``value`` is a finite number in the range given (``*_open``:
    the bound itself is excluded), and a whole number when ``integer``."""
    kind = "an integer" if integer else "a finite number"
    ok = isinstance(value, Integral if integer else Real) and not isinstance(value, bool)
    ok = ok and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        bounds = []
        if low is not None:
            bounds.append(f"{'>' if low_open else '>='} {low:g}")
        if high is not None:
            bounds.append(f"{'<' if high_open else '<='} {high:g}")
        raise GraspError(
            f"{flag} {value} must be {kind}{' ' + ' and '.join(bounds) if bounds else ''}"
        )
