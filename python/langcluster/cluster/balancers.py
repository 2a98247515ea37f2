"""The balancers a ``Cluster`` builds by name, and the one rule for what
its ``balancer`` argument may be."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from langcluster._core import (
    Adaptive,
    Balancer,
    ConsistentHash,
    LeastConnections,
    PowerOfTwoChoices,
    PrefixAware,
    Random,
    RoundRobin,
    WeightedRoundRobin,
)
from langcluster.types import BalancerName

__all__ = ["BALANCERS", "choose_balancer"]

BALANCERS: dict[BalancerName, type[Balancer]] = {
    "round_robin": RoundRobin,
    "weighted_round_robin": WeightedRoundRobin,
    "least_connections": LeastConnections,
    "consistent_hash": ConsistentHash,
    "adaptive": Adaptive,
    "random": Random,
    "power_of_two_choices": PowerOfTwoChoices,
    "prefix_aware": PrefixAware,
}


def choose_balancer(
    balancer: BalancerName | Balancer, options: Mapping[str, Any] | None
) -> Balancer:
    """A balancer built by name with ``options``, or the one given (which
    takes no options); errors name the argument."""
    if isinstance(balancer, str):
        kind = BALANCERS.get(balancer)
        if kind is None:
            raise ValueError(
                f"balancer: must be one of {', '.join(BALANCERS)} or a balancer, got {balancer!r}"
            )
        factory: Any = kind
        built: Balancer = factory([], **dict(options or {}))
        return built
    if not isinstance(balancer, Balancer):
        raise TypeError(f"balancer: must be a name or a balancer, got {type(balancer).__name__}")
    if options:
        raise ValueError("balancer_options: only with a balancer given by name")
    return balancer
