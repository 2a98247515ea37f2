"""Config objects made from a component's own signature.

``BreakerConfig``, ``FailoverConfig`` and ``HealthConfig`` are the keyword
arguments of ``CircuitBreaker``, ``FailoverManager`` and ``HealthMonitor``,
held for later: the same names, the same defaults, checked by the same code
as the component itself, so a bad value fails where the config is made and
names its field. No field list is written twice: a ``Settings`` subclass
names the function that checks and completes the arguments (the one the
component uses itself), and ``typed_like`` gives its ``__init__`` the
component's signature, for type checkers and the API reference.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Concatenate, ParamSpec, TypeVar

__all__ = ["Settings", "complete", "keyword_parameters", "typed_like"]

P = ParamSpec("P")
S = TypeVar("S", bound="Settings")


def typed_like(
    component: Callable[Concatenate[Any, P], Any],
) -> Callable[[Callable[..., None]], Callable[Concatenate[Any, P], None]]:
    """Gives a Settings ``__init__`` the component's parameters after its
    first one, for type checkers; at run time the function is unchanged."""

    def decorate(init: Callable[..., None]) -> Callable[Concatenate[Any, P], None]:
        init.__settings_of__ = component  # type: ignore[attr-defined]  # for the API reference
        return init

    return decorate


def keyword_parameters(component: Callable[..., Any], skip: int) -> dict[str, inspect.Parameter]:
    """The parameters of ``component`` after its first ``skip`` ones."""
    params = list(inspect.signature(component).parameters.values())
    return {p.name: p for p in params[skip:] if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def complete(
    owner: str, parameters: Mapping[str, inspect.Parameter], given: Mapping[str, Any]
) -> dict[str, Any]:
    """``given`` with the defaults of the parameters it leaves out; an
    unknown or missing name raises TypeError naming it."""
    for name in given:
        if name not in parameters:
            raise TypeError(
                f"{name}: not a setting of {owner} (its settings: {', '.join(parameters)})"
            )
    values: dict[str, Any] = {}
    for name, param in parameters.items():
        if name in given:
            values[name] = given[name]
        elif param.default is param.empty:
            raise TypeError(f"{name}: a required setting of {owner}")
        else:
            values[name] = param.default
    return values


class Settings:
    """The keyword arguments of one component, checked and completed with
    its defaults when made; read them as attributes. Immutable: ``replace``
    makes a changed copy."""

    __slots__ = ("_values",)

    # The component's own check: takes the given arguments, returns all of
    # them (defaults included) or raises an error naming the bad one.
    _check: ClassVar[Callable[[dict[str, Any]], dict[str, Any]]]

    def __init_subclass__(cls, *, check: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        super().__init_subclass__()
        cls._check = check

    def __init__(self, **values: Any) -> None:
        object.__setattr__(self, "_values", type(self)._check(values))

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no setting {name!r}") from None

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable; use replace({name}=...)")

    def as_dict(self) -> dict[str, Any]:
        """Every setting, defaults included."""
        return dict(self._values)

    def replace(self: S, **changes: Any) -> S:
        """A copy with ``changes`` applied (and checked)."""
        return type(self)(**{**self._values, **changes})

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._values == other._values  # type: ignore[no-any-return]

    def __hash__(self) -> int:
        return hash((type(self), tuple(self._values.items())))

    def __repr__(self) -> str:
        """The settings that differ from the defaults."""
        try:
            defaults = type(self)._check({})
        except TypeError:  # a setting without a default: show them all
            defaults = {}
        fields = ", ".join(
            f"{k}={v!r}" for k, v in self._values.items() if k not in defaults or defaults[k] != v
        )
        return f"{type(self).__name__}({fields})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self._values))


def _rebuild(cls: type[Settings], values: dict[str, Any]) -> Settings:
    return cls(**values)
