"""What the fuzz targets are given, and how a refusal is checked: the
values no API expects, the strategies that make them, and the rule that a
refusal names the argument it refuses."""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable
from typing import Any

from hypothesis import strategies as st

import langcluster as lc

# ------------------------------------------------------------------ values


class Odd:
    """An object no API expects: raising ``__eq__``, ``__hash__``, ``__bool__``."""

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("__eq__ of an odd object")

    def __hash__(self) -> int:
        raise RuntimeError("__hash__ of an odd object")

    def __bool__(self) -> bool:
        raise RuntimeError("__bool__ of an odd object")

    def __repr__(self) -> str:
        return "Odd()"


def nested(depth: int) -> Any:
    value: Any = ()
    for _ in range(depth):
        value = (value,)
    return value


TEXT = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=20)
NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 1, 2**31, 2**32, 2**63, 2**64, 10**30, -(2**63)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e-300, 1e300, 1.9e19, math.inf, -math.inf, math.nan]),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT, st.binary(max_size=20))
EXTREME = st.one_of(
    SCALARS,
    st.lists(SCALARS, max_size=4),
    st.dictionaries(TEXT, SCALARS, max_size=3),
    st.tuples(SCALARS, SCALARS),
    st.sampled_from([nested(10), nested(200), nested(5000)]),
    st.builds(Odd),
    st.just(object()),
)
KEYS = st.one_of(TEXT, st.binary(max_size=20), NUMBERS, st.booleans(), st.none(), EXTREME)


class RawNode:
    def __init__(self, id: Any, weight: Any = 1, status: Any = None) -> None:
        self.id = id
        self.weight = weight
        if status is not None:
            self.status = status


NODES = st.lists(
    st.builds(
        RawNode,
        id=st.one_of(TEXT, st.sampled_from(["a", "b", "c"]), EXTREME),
        weight=st.one_of(st.just(1), NUMBERS, EXTREME),
        status=st.one_of(st.none(), st.sampled_from(["healthy", "unhealthy", "draining"]), EXTREME),
    ),
    max_size=5,
)
GOOD_NODES = [RawNode("a"), RawNode("b", 2), RawNode("c", 0.5)]


def fields(config: Any) -> list[str]:
    """The fields of a config object, read from the object itself."""
    return sorted(config.as_dict())


def keywords(
    component: Callable[..., Any], skip: frozenset[str] | set[str] = frozenset()
) -> list[str]:
    """The named parameters of ``component``, read from its signature."""
    return [p for p in inspect.signature(component).parameters if p not in skip]


# ---------------------------------------------------------------- checking

ALLOWED = (lc.LangClusterError, MemoryError, RecursionError, KeyError)
NAMED = re.compile(r"^([A-Za-z_]\w*)(\[\d+\])?[.:\[]")


def enter(context: Any) -> None:
    with context:
        pass


def call(fn: Callable[..., Any], names: list[str], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``; a refusal must be allowed, and name an
    argument of ``names`` when it is a ValueError or TypeError."""
    try:
        return fn(*args, **kwargs)
    except ALLOWED:
        return None
    except (ValueError, TypeError) as error:
        text = str(error)
        match = NAMED.match(text)
        named = match.group(1) if match else None
        assert named in names, f"{fn!r}: unnamed: {text!r}"
        return None
