"""Type stubs for the Rust extension ``langcluster._core`` (checked by stubtest)."""

from collections.abc import Generator, Iterable
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar, final, type_check_only

from typing_extensions import disjoint_base

__version__: str
__all__ = [
    "Adaptive",
    "Balancer",
    "ConsistentHash",
    "Lease",
    "LeastConnections",
    "PowerOfTwoChoices",
    "Random",
    "Ready",
    "RoundRobin",
    "WeightedRoundRobin",
    "__version__",
]

_T_co = TypeVar("_T_co", covariant=True)

@type_check_only
class _NodeLike(Protocol):
    @property
    def id(self) -> str: ...

_Key = str | bytes | int

@disjoint_base
class Balancer:
    """Base class of every balancer; not instantiable itself."""

    def pick(self, key: _Key | None = None) -> Any:
        """The picked node object itself. Raises NoAvailableNode."""

    def acquire(self, key: _Key | None = None) -> Lease:
        """A sync and async context manager holding one request in flight."""

    def begin(self, node_id: str) -> None: ...
    def end(self, node_id: str, latency_s: float, ok: bool = True) -> bool: ...
    def update(self, nodes: Iterable[_NodeLike]) -> None: ...
    def set_available(self, node_id: str, available: bool) -> bool: ...
    def stats(self) -> dict[str, dict[str, Any]]: ...
    @property
    def nodes(self) -> list[Any]: ...
    @property
    def available_count(self) -> int: ...
    def __len__(self) -> int: ...
    def __contains__(self, key: object, /) -> bool: ...

@final
class RoundRobin(Balancer):
    def __new__(cls, nodes: Iterable[_NodeLike] | None = None) -> RoundRobin: ...

@final
class WeightedRoundRobin(Balancer):
    def __new__(cls, nodes: Iterable[_NodeLike] | None = None) -> WeightedRoundRobin: ...

@final
class LeastConnections(Balancer):
    def __new__(cls, nodes: Iterable[_NodeLike] | None = None) -> LeastConnections: ...

@final
class Random(Balancer):
    def __new__(cls, nodes: Iterable[_NodeLike] | None = None) -> Random: ...

@final
class PowerOfTwoChoices(Balancer):
    def __new__(cls, nodes: Iterable[_NodeLike] | None = None) -> PowerOfTwoChoices: ...

@final
class Adaptive(Balancer):
    def __new__(
        cls, nodes: Iterable[_NodeLike] | None = None, *, decay_s: float = 10.0
    ) -> Adaptive: ...

@final
class ConsistentHash(Balancer):
    def __new__(
        cls,
        nodes: Iterable[_NodeLike] | None = None,
        *,
        vnodes: int = 160,
        load_factor: float | None = None,
    ) -> ConsistentHash: ...
    @property
    def vnodes(self) -> int: ...
    @property
    def load_factor(self) -> float | None: ...

@final
class Lease:
    def __enter__(self) -> Any: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        _exc_value: BaseException | None = None,
        _traceback: TracebackType | None = None,
    ) -> bool: ...
    def __aenter__(self) -> Ready[Any]: ...
    def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> Ready[bool]: ...

@final
class Ready(Generic[_T_co]):
    def __await__(self) -> Generator[Any, None, _T_co]: ...
    def __iter__(self) -> Ready[_T_co]: ...
    def __next__(self) -> Any: ...
