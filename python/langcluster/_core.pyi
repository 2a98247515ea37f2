"""Type stubs for the Rust extension ``langcluster._core`` (checked by stubtest)."""

from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, Generic, TypeVar, final

from typing_extensions import Self, disjoint_base

from langcluster.types import BreakerState, Key, NodeLike, Policy, PrefixLoad, Prompt, Window

__version__: str
__all__ = [
    "Adaptive",
    "Balancer",
    "CachedFunction",
    "CallKey",
    "CallTimer",
    "CircuitBreaker",
    "ConsistentHash",
    "Counters",
    "Guarded",
    "Histogram",
    "Lease",
    "LeastConnections",
    "MemoryCache",
    "PowerOfTwoChoices",
    "PrefixAware",
    "Random",
    "Ready",
    "RoundRobin",
    "WeightedRoundRobin",
    "__version__",
    "breaker_settings",
    "check_node",
    "read_prompt_fast",
    "wrap_cached",
]

_T_co = TypeVar("_T_co", covariant=True)
_T = TypeVar("_T")
_F = TypeVar("_F", bound=Callable[[BreakerState, BreakerState], object])

def check_node(id: str, weight: float) -> None:
    """Checks a node's id and weight as every balancer does."""

def read_prompt_fast(field: str, body: bytes) -> tuple[str, int] | None:
    """The prompt of an OpenAI-style body (``field``: ``messages``,
    ``prompt`` or ``input``) and where its history ends, in characters; None
    for a shape left to the Python reader."""

@final
class Counters:
    """Named counters, each bump one atomic add."""

    def __new__(cls, *names: str) -> Self: ...
    def add(self, name: str, n: int = 1) -> None: ...
    def get(self, name: str) -> int: ...
    def snapshot(self) -> dict[str, int]: ...

def breaker_settings(**settings: Any) -> dict[str, Any]:
    """A breaker's settings, checked and completed with the defaults."""

def wrap_cached(
    func: Callable[..., Any],
    cache: MemoryCache,
    flights: Any,
    *,
    ttl: float | None = None,
    key_fn: Callable[..., Any] | None = None,
    is_async: bool = False,
) -> CachedFunction:
    """The wrapper behind ``langcluster.cached``."""

@disjoint_base
class Balancer:
    """Base class of every balancer; not instantiable itself."""

    def pick(self, key: Key | None = None) -> Any:
        """The picked node object itself. Raises NoAvailableNode."""

    def acquire(self, key: Key | None = None) -> Lease:
        """A sync and async context manager holding one request in flight."""

    def begin(self, node_id: str) -> None: ...
    def end(self, node_id: str, latency_s: float, ok: bool = True) -> bool: ...
    def release(self, node_id: str) -> bool: ...
    def update(self, nodes: Iterable[NodeLike]) -> None: ...
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
    def __new__(cls, nodes: Iterable[NodeLike] | None = None) -> RoundRobin: ...

@final
class WeightedRoundRobin(Balancer):
    def __new__(cls, nodes: Iterable[NodeLike] | None = None) -> WeightedRoundRobin: ...

@final
class LeastConnections(Balancer):
    def __new__(cls, nodes: Iterable[NodeLike] | None = None) -> LeastConnections: ...

@final
class Random(Balancer):
    def __new__(cls, nodes: Iterable[NodeLike] | None = None) -> Random: ...

@final
class PowerOfTwoChoices(Balancer):
    def __new__(cls, nodes: Iterable[NodeLike] | None = None) -> PowerOfTwoChoices: ...

@final
class Adaptive(Balancer):
    def __new__(
        cls, nodes: Iterable[NodeLike] | None = None, *, decay_s: float = 10.0
    ) -> Adaptive: ...

@final
class ConsistentHash(Balancer):
    def __new__(
        cls,
        nodes: Iterable[NodeLike] | None = None,
        *,
        vnodes: int = 160,
        load_factor: float | None = None,
    ) -> ConsistentHash: ...
    @property
    def vnodes(self) -> int: ...
    @property
    def load_factor(self) -> float | None: ...

@final
class PrefixAware(Balancer):
    def __new__(
        cls,
        nodes: Iterable[NodeLike] | None = None,
        *,
        block_size: int = 64,
        token_block_size: int = 16,
        max_blocks: int = 262144,
        node_blocks: int | None = None,
        max_prompt_blocks: int = 1024,
        balance_rel: float = 1.5,
        balance_abs: float = 8.0,
        min_match: float = 0.1,
        prefill_weight: float = 4.0,
        prefill_decay_s: float = 1.0,
        choices: int | None = None,
        load: PrefixLoad = "in_flight",
        shards: int = 16,
        decay_s: float = 10.0,
        seed: int | None = None,
        tokenizer: Any = None,
        clock: Callable[[], float] | None = None,
    ) -> PrefixAware: ...
    def pick(self, prompt: Prompt | None = None, *, exclude: Iterable[str] | None = None) -> Any:
        """The node for ``prompt``; records that it now holds its blocks."""

    def acquire(self, prompt: Prompt | None = None) -> Lease:
        """A sync and async context manager picking for ``prompt``."""

    def end(
        self, node_id: str, latency_s: float, ok: bool = True, *, ttft_s: float | None = None
    ) -> bool: ...
    def observe_ttft(self, node_id: str, ttft_s: float) -> bool: ...
    def forget(self, node_id: str) -> None:
        """Forgets what the record holds for ``node_id`` (a cold restart)."""

    def set_node_blocks(self, node_id: str, blocks: int) -> None: ...
    def depths(self, prompt: Prompt) -> dict[str, int]: ...
    def apply_kv_events(self, node_id: str, data: bytes) -> dict[str, int]:
        """Applies one batch of the node's KV cache events (vLLM msgpack)."""

    def prefix_stats(self) -> dict[str, Any]: ...
    def keep_journal(self, max_bytes: int) -> None: ...
    def take_journal(self) -> bytes: ...
    def merge_journal(self, data: bytes) -> int: ...
    @property
    def settings(self) -> dict[str, int | float | str | None]: ...

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
class CallTimer:
    """Histograms of call durations by outcome, timed on a clock of its own."""

    def __new__(cls, bounds: Iterable[float], outcomes: Iterable[str]) -> CallTimer: ...
    def began(self, *_what: object) -> int: ...
    def ended(self, token: int, outcome: str, error: object = None) -> None: ...
    def snapshot(self) -> list[tuple[str, tuple[list[int], float]]]: ...

@final
class Histogram:
    """Fixed-bucket histogram filled without a lock (langcluster.metrics)."""

    def __new__(cls, bounds: Iterable[float]) -> Histogram: ...
    def observe(self, value: float) -> None: ...
    def snapshot(self) -> tuple[list[int], float]: ...
    @property
    def bounds(self) -> list[float]: ...

@final
class Ready(Generic[_T_co]):
    def __await__(self) -> Generator[Any, None, _T_co]: ...
    def __iter__(self) -> Ready[_T_co]: ...
    def __next__(self) -> Any: ...

@final
class MemoryCache:
    """A bounded in-memory cache of Python objects: sharded, with a choice of
    eviction policy ('tinylfu', 'lru', 'lfu', 'fifo'), a capacity in entries
    or (with a weigher) in weight, and per-entry TTL and time-to-idle."""

    def __new__(
        cls,
        capacity: int,
        *,
        policy: Policy = "tinylfu",
        ttl: float | None = None,
        tti: float | None = None,
        weigher: Callable[[Any, Any], int] | None = None,
        shards: int | None = None,
        on_evict: Callable[[Any, Any, str], object] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> MemoryCache: ...
    def get(self, key: Key, default: Any = None) -> Any: ...
    def __getitem__(self, key: Key, /) -> Any: ...
    def set(
        self, key: Key, value: Any, ttl: float | None = None, tti: float | None = None
    ) -> None: ...
    def __setitem__(self, key: Key, value: Any, /) -> None: ...
    def delete(self, key: Key) -> bool: ...
    def __delitem__(self, key: Key, /) -> None: ...
    def pop(self, key: Key, default: Any = ...) -> Any: ...
    def __contains__(self, key: Key, /) -> bool: ...
    def get_many(self, keys: Iterable[Key]) -> dict[Any, Any]: ...
    def set_many(
        self,
        mapping: Mapping[Any, Any] | Iterable[tuple[Any, Any]],
        ttl: float | None = None,
        tti: float | None = None,
    ) -> None: ...
    def delete_many(self, keys: Iterable[Key]) -> int: ...
    def clear(self) -> None: ...
    def purge_expired(self) -> int: ...
    def __len__(self) -> int: ...
    def keys(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...
    def stats(self) -> dict[str, Any]: ...
    def reset_stats(self) -> None: ...
    def memory_usage(self) -> int: ...
    @property
    def capacity(self) -> int: ...
    @property
    def policy(self) -> Policy: ...
    @property
    def ttl(self) -> float | None: ...
    @property
    def tti(self) -> float | None: ...
    @property
    def weigher(self) -> Callable[[Any, Any], int] | None: ...
    @property
    def max_weight(self) -> int: ...
    @property
    def shards(self) -> int: ...

@final
class CachedFunction:
    """What ``cached`` returns: call it like the function it wraps."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...
    def invalidate(self, *args: Any, **kwargs: Any) -> bool: ...
    @property
    def cache(self) -> MemoryCache: ...

@final
class CallKey:
    """One missing call of a cached function, as seen by the single-flight code."""

    def __hash__(self) -> int: ...
    def __eq__(self, other: object, /) -> bool: ...
    def lookup(self, default: Any) -> Any: ...
    def store(self, value: Any) -> None: ...

@disjoint_base
class CircuitBreaker:
    """The breaker's Rust core; use ``langcluster.CircuitBreaker``."""

    def __new__(
        cls,
        name: str | None = None,
        *,
        failure_rate_threshold: float = 0.5,
        slow_call_rate_threshold: float = 1.0,
        slow_call_duration_s: float | None = None,
        window: Window = "count",
        window_size: int = 20,
        minimum_calls: int = 5,
        open_timeout_s: float = 5.0,
        half_open_max_calls: int = 2,
        max_open_timeout_s: float | None = 60.0,
        record: type[BaseException] | Iterable[type[BaseException]] = (Exception,),
        ignore: type[BaseException] | Iterable[type[BaseException]] = (),
        clock: Callable[[], float] | None = None,
    ) -> Self: ...
    def allow(self) -> bool:
        """Whether a call may go ahead now. True takes a permit: report the
        call with ``record_success``, ``record_failure`` or ``release``."""
    def record_success(self, latency_s: float | None = None) -> None: ...
    def record_failure(self, latency_s: float | None = None) -> None: ...
    def release(self) -> None:
        """Gives back a permit without counting an outcome."""
    def admit(self) -> None:
        """Takes a permit or raises ``CircuitOpenError``; report the call with
        ``report`` (or ``release``)."""
    def report(self, error: BaseException | None = None, latency_s: float | None = None) -> None:
        """Reports a call admitted by ``admit``: no ``error`` is a success; an
        exception counts as ``record`` and ``ignore`` say, and a
        ``BaseException`` such as a cancellation counts as nothing."""
    def call(self, func: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Calls ``func(*args, **kwargs)`` through the breaker."""
    def _guard(self, func: Callable[..., Any]) -> Guarded: ...
    @property
    def _timed(self) -> bool: ...
    @property
    def state(self) -> BreakerState: ...
    @property
    def name(self) -> str | None: ...
    def metrics(self) -> dict[str, Any]:
        """The window's counts and rates, the state and ``retry_after_s``."""
    def force_open(self) -> None: ...
    def disable(self) -> None: ...
    def open_for(self, seconds: float) -> None:
        """Opens the breaker for ``seconds`` (0 to 86,400) from now, in any
        state but disabled: the service was found down elsewhere (another
        process). Trials decide when the time is over."""
    def half_open(self) -> None:
        """Ends an open period now (or starts a half-open one afresh): the
        next calls are trials."""
    def reset(self) -> None: ...
    def on_state_change(self, callback: _F) -> _F:
        """Registers ``callback(old_state, new_state)``; returns it."""

@final
class Guarded:
    """A function wrapped by ``@breaker``."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...
    @property
    def breaker(self) -> CircuitBreaker: ...
