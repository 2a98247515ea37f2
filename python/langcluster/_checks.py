"""The checks of the arguments the Python tiers take: one rule per kind of
value, each error naming the argument (the Rust core checks its own).

- A duration is a number of seconds (an int or a float, not a bool),
  finite, above zero and at most ``MAX_SECONDS``: ``inf`` would make a
  timeout never fire or a poll never happen, and a number past that bound
  overflows the clocks and sockets it reaches.
- A count is an int (not a bool) from a minimum up.
- A fraction is a number from 0 to 1.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["MAX_SECONDS", "choice", "count", "flag", "fraction", "seconds", "text"]

# About 31 years: more than any timeout, interval or lifetime needs.
MAX_SECONDS = 1e9


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name}: must be a number, got {type(value).__name__}")
    return float(value)


def seconds(name: str, value: Any, *, optional: bool = False, zero: bool = False) -> Any:
    """A duration in seconds (``None`` too when ``optional``; 0 too when
    ``zero``); returns it as given."""
    if value is None and optional:
        return None
    number = _number(name, value)
    low_ok = number >= 0 if zero else number > 0
    if not (math.isfinite(number) and low_ok and number <= MAX_SECONDS):
        low = "0" if zero else "above 0"
        raise ValueError(
            f"{name}: must be a number of seconds from {low} to {MAX_SECONDS:.0e}, got {value!r}"
        )
    return value


def count(name: str, value: Any, *, minimum: int = 1) -> int:
    """An int of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: must be at least {minimum}, got {value!r}")
    return value


def fraction(name: str, value: Any, *, below_one: bool = False) -> float:
    """A number from 0 to 1 (to just below 1 when ``below_one``)."""
    number = _number(name, value)
    high_ok = number < 1 if below_one else number <= 1
    if not (number >= 0 and high_ok):
        high = "below 1" if below_one else "1"
        raise ValueError(f"{name}: must be a number from 0 to {high}, got {value!r}")
    return number


def flag(name: str, value: Any) -> bool:
    """A bool (not any truthy value: ``"false"`` is truthy)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name}: must be True or False, got {type(value).__name__}")
    return value


def text(name: str, value: Any, *, empty: bool = False) -> str:
    """A str that UTF-8 can encode (no lone surrogates); not empty unless
    ``empty``."""
    if not isinstance(value, str):
        raise TypeError(f"{name}: must be a str, got {type(value).__name__}")
    if not value and not empty:
        raise ValueError(f"{name}: must not be empty")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{name}: must be text UTF-8 can encode (no lone surrogates)") from None
    return value


def choice(name: str, value: Any, choices: tuple[str, ...]) -> Any:
    """One of the strings ``choices``; the type is checked before any
    comparison, so an object with an odd ``__eq__`` is refused, not run."""
    if isinstance(value, str) and value in choices:
        return value
    listed = ", ".join(map(repr, choices[:-1])) + f" or {choices[-1]!r}"
    if not isinstance(value, str):
        raise TypeError(f"{name}: must be {listed}, got {type(value).__name__}")
    raise ValueError(f"{name}: must be {listed}, got {value!r}")
