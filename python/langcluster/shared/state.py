"""``SharedState``: what the processes of one service tell each other through
Redis: ejections (here), health checks (``shared.health``) and the prefix
index of ``PrefixAware`` (``shared.prefixes``).

Ejections: when a process's breaker opens for a node, it publishes the node
and the deadline of its open time (and keeps them in a key that expires
then, for processes that start or reconnect later). Every other process
opens its own breaker for the node until that deadline
(``CircuitBreaker.open_for``), after which its breaker admits trials as
after any open period; the first process whose trial succeeds publishes
that the node is back, and every process closes its breaker for it.

Redis is never on the path of a call: when it is down, each process keeps
its own judgement, counts the errors, and reads the ejections in force again
when Redis returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from langcluster._checks import count, flag, fraction, seconds, text
from langcluster._core import PrefixAware
from langcluster._counters import Counters
from langcluster.failover.events import FailoverEvent
from langcluster.failover.events import FailoverEventKind as Event
from langcluster.shared.failures import ConsecutiveFailures, count_failure
from langcluster.shared.health import HealthLease
from langcluster.shared.messages import MAX_NODE_ID, Kind, Message, decode, encode
from langcluster.shared.prefixes import PrefixSharing

if TYPE_CHECKING:
    from langcluster.shared.parts import SharedParts

__all__ = ["SharedState"]

_log = logging.getLogger(__name__)
_MAX_KEYS = 10_000  # ejections read back at a (re)connection, at most
_HELD_S = 3600.0  # a node ejected elsewhere stays out here until a permit or a message


class SharedState:
    """State shared by the processes of one service through Redis; give it
    to ``Cluster(..., shared_state=SharedState(url))``, one per cluster.

    - ``redis``: a URL (one Redis), or a ``redis.asyncio.Redis`` or
      ``RedisCluster`` client (used on the cluster's event loop; the state
      does not close a client it was given).
    - ``namespace`` prefixes its channel and keys:
      ``{namespace}:shared:{service}:...``.
    - ``signing_key``: messages are signed with HMAC-SHA256, and unsigned or
      badly signed ones are refused, so that a process without the key
      cannot eject nodes. Give every process the same key.
    - ``timeout_s`` bounds each Redis command of the state.
    - ``consecutive_failures``: failures in a row on a node, counted over every
      process (Envoy's consecutive failures, service-wide), that eject it
      everywhere at once, before any one process's breaker would open;
      a success anywhere starts the count again. ``None``: only breakers'
      openings are shared.
    - ``share_ejections``: share node ejections (above); ``share_health``:
      one health checker per service (when the cluster has health checks):
      the process holding a lease in Redis checks and publishes what it
      finds, the others follow (``shared.health``).
    - ``trial_s``: how long a process holds a node's trial permit. When an
      ejection's time is over, only the holder's breaker admits trials (the
      ejecting process first); the others wait for its verdict, or for the
      permit when it expires (its holder died).
    - ``max_ejected``: the share of the nodes that other processes' word
      (their breakers, the service-wide failure count) may hold out of
      this process's rotation at once; past it their ejections are counted
      (``ejections_capped``) and not applied, so one process that blames
      every node (its own loop stalled) cannot empty the others' rotation.
    - ``share_prefixes``: when the cluster's balancer is ``PrefixAware``,
      every router publishes what it routed each ``prefix_flush_s`` and
      merges what the others routed (``shared.prefixes``); a router that
      starts or reconnects first merges what they routed in the last
      ``prefix_history_s`` (kept in a Redis stream; 0: not kept).
    """

    def __init__(
        self,
        redis: str | Any,
        *,
        namespace: str = "langcluster",
        signing_key: bytes | str | None = None,
        timeout_s: float = 0.5,
        trial_s: float = 2.0,
        consecutive_failures: int | None = 5,
        share_ejections: bool = True,
        share_health: bool = True,
        share_prefixes: bool = True,
        prefix_flush_s: float = 0.02,
        prefix_history_s: float = 60.0,
        max_ejected: float = 0.5,
    ) -> None:
        if isinstance(redis, str):
            text("redis", redis)
        elif not callable(getattr(redis, "pubsub", None)) or not hasattr(redis, "publish"):
            raise TypeError(
                f"redis: must be a URL or a redis.asyncio client, got {type(redis).__name__}"
            )
        text("namespace", namespace)
        if isinstance(signing_key, str):
            try:
                signing_key = signing_key.encode()
            except UnicodeEncodeError:
                raise ValueError("signing_key: not encodable as UTF-8 (a lone surrogate)") from None
        if signing_key is not None and (not isinstance(signing_key, bytes) or not signing_key):
            raise TypeError("signing_key: must be non-empty bytes or str, or None")
        seconds("timeout_s", timeout_s)
        seconds("trial_s", trial_s)
        seconds("prefix_flush_s", prefix_flush_s)
        seconds("prefix_history_s", prefix_history_s, zero=True)
        fraction("max_ejected", max_ejected)
        if consecutive_failures is not None:
            count("consecutive_failures", consecutive_failures)
        self.redis = redis
        self.namespace = namespace
        self.timeout_s = timeout_s
        self.trial_s = trial_s
        self.consecutive_failures = consecutive_failures
        self.share_ejections = flag("share_ejections", share_ejections)
        self.share_health = flag("share_health", share_health)
        self.share_prefixes = flag("share_prefixes", share_prefixes)
        self.prefix_flush_s = prefix_flush_s
        self.prefix_history_s = prefix_history_s
        self.max_ejected = max_ejected
        self._key = signing_key
        self._origin = os.urandom(8)
        self._cluster: SharedParts | None = None
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._outbox: asyncio.Queue[Message | tuple[str, bool]] | None = None
        self._applying = threading.local()
        self._mine: dict[str, Message] = {}  # this process's ejections
        self._waiting: dict[str, asyncio.TimerHandle] = {}  # held here, for a permit
        self._pending: set[asyncio.Future[Any]] = set()
        self._lease: HealthLease | None = None
        self._prefixes: PrefixSharing | None = None
        self._unsubscribe: Any = None
        self.connected = False
        self._stats = Counters(
            "published", "received", "applied", "refused", "publish_failures", "redis_errors",
            "dropped", "trials_won", "ejections_counted", "ejections_capped", "health_leases",
            "routes_published", "routes_merged",
        )  # fmt: skip

    # -------------------------------------------------------------- names

    def _prefix(self) -> str:
        assert self._cluster is not None
        return f"{self.namespace}:shared:{self._cluster.service}"

    # ---------------------------------------------------------- lifecycle

    async def _attach(self, cluster: SharedParts) -> None:
        """Starts sharing for the parts of a cluster (``Cluster.astart``
        hands them over)."""
        if self._cluster is not None:
            raise ValueError("shared_state: this SharedState already serves a cluster")
        self._cluster = cluster
        self._loop = asyncio.get_running_loop()
        self._outbox = asyncio.Queue(maxsize=1000)
        if isinstance(self.redis, str):
            import redis.asyncio

            self._client = redis.asyncio.from_url(
                self.redis, socket_timeout=self.timeout_s, socket_connect_timeout=self.timeout_s
            )
        else:
            self._client = self.redis
        unsubscribe = cluster.failover.subscribe(self._on_event) if self.share_ejections else None
        unobserve = (
            cluster.failover.observe(ConsecutiveFailures(self))
            if self.share_ejections and self.consecutive_failures is not None
            else None
        )

        def stop() -> None:
            if unsubscribe is not None:
                unsubscribe()
            if unobserve is not None:
                unobserve()

        self._unsubscribe = stop
        self._tasks = [
            asyncio.create_task(self._listen(), name="langcluster:shared:listen"),
            asyncio.create_task(self._publish(), name="langcluster:shared:publish"),
        ]
        if self.share_health and cluster.health is not None:
            self._lease = HealthLease(self, cluster, cluster.health)
            self._tasks.append(asyncio.create_task(self._lease.run(), name="langcluster:lease"))
        if self.share_prefixes and isinstance(cluster.balancer, PrefixAware):
            self._prefixes = PrefixSharing(self, cluster.balancer)
            self._tasks.append(asyncio.create_task(self._prefixes.run(), name="langcluster:routes"))

    async def _detach(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for part in (self._lease, self._prefixes):
            if part is not None:
                part.close()
        self._lease = self._prefixes = None
        for timer in self._waiting.values():
            timer.cancel()
        self._waiting.clear()
        tasks = [*self._tasks, *self._pending]
        for task in tasks:
            task.cancel()
        # A Redis command cancelled mid-flight may not finish until its
        # connection goes: wait a little, close the client, then wait again.
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=self.timeout_s)
        if self._client is not None and isinstance(self.redis, str):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._client.aclose(), self.timeout_s)
        if tasks and stuck:
            await asyncio.wait(stuck, timeout=self.timeout_s)
        self._tasks = []
        self._client = None
        self.connected = False

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = self._stats.snapshot()
        out["connected"] = self.connected
        return out

    # ------------------------------------------------------------ sending

    def _on_event(self, event: FailoverEvent) -> None:
        """A breaker of this process changed: tell the others (from any
        thread; the message leaves from the cluster's loop)."""
        if getattr(self._applying, "on", False) or self._loop is None:
            return  # a change this state made itself, from a message
        node_id = getattr(event.node, "id", None)
        if not isinstance(node_id, str) or len(node_id.encode(errors="replace")) > MAX_NODE_ID:
            return
        if event.kind is Event.BREAKER_OPENED and event.detail.endswith("-> open"):
            assert self._cluster is not None
            wait = self._cluster.failover.breaker(node_id).metrics()["retry_after_s"]
            deadline = int((time.time() + wait) * 1000)
            message = Message(Kind.EJECT, node_id, deadline, self._origin)
        elif event.kind is Event.BREAKER_CLOSED and event.detail.startswith("half_open"):
            message = Message(Kind.CLOSE, node_id, 0, self._origin)
        else:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closing
            self._loop.call_soon_threadsafe(self._enqueue, message)

    def _enqueue(self, item: Message | tuple[str, bool]) -> None:
        assert self._outbox is not None
        if isinstance(item, Message) and item.kind is not Kind.HEALTH:
            if item.kind is Kind.EJECT:  # told again after a reconnection, while in force
                self._mine[item.node_id] = item
            else:
                self._mine.pop(item.node_id, None)
        try:
            self._outbox.put_nowait(item)
        except asyncio.QueueFull:
            self._stats.add("dropped")

    async def _publish(self) -> None:
        assert self._outbox is not None
        while True:
            item = await self._outbox.get()
            try:
                if isinstance(item, Message) and item.kind is Kind.HEALTH:
                    send_health = self._send_health(item, encode(item, self._key))
                    await asyncio.wait_for(send_health, self.timeout_s)
                    self._stats.add("published")
                elif isinstance(item, Message):
                    key = f"{self._prefix()}:ejected:{item.node_id}"
                    send = self._send(item, encode(item, self._key), key)
                    await asyncio.wait_for(send, self.timeout_s)
                    self._stats.add("published")
                else:
                    await asyncio.wait_for(count_failure(self, *item), self.timeout_s)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # Redis is down: this process goes on alone
                self._stats.add("publish_failures")
                _log.debug("shared state: publishing failed: %r", error)

    async def _send_health(self, message: Message, data: bytes) -> None:
        await self._client.hset(
            f"{self._prefix()}:health:status", message.node_id, message.deadline_ms
        )
        await self._client.publish(f"{self._prefix()}:health", data)

    async def _send(self, message: Message, data: bytes, key: str) -> None:
        async with self._client.pipeline(transaction=False) as pipe:
            if message.kind is Kind.EJECT:
                left_ms = message.deadline_ms - int(time.time() * 1000)
                if left_ms > 0:
                    pipe.set(key, data, px=left_ms)
                    # This process runs the trials when the time is over: it
                    # holds the permit until then and one permit longer.
                    permit_ms = left_ms + int(self.trial_s * 1000)
                    pipe.set(self._trial_key(message.node_id), self._origin, px=permit_ms)
            else:
                pipe.delete(key)
            await pipe.execute()
        # Apart from the keys: Redis Cluster routes a pipeline by its keys.
        await self._client.publish(f"{self._prefix()}:ejections", data)

    # ---------------------------------------------------------- receiving

    async def _listen(self) -> None:
        delay_s = 0.05
        while True:
            pubsub = None
            try:
                if hasattr(self._client, "get_nodes"):  # Redis Cluster: learn its slots first
                    await self._client.initialize()
                pubsub = self._client.pubsub()
                channels = [f"{self._prefix()}:{c}" for c in ("ejections", "health")]
                if self._prefixes is not None:
                    channels.append(self._prefixes.channel)
                await pubsub.subscribe(*channels)
                await self._resync()
                if self._prefixes is not None:
                    await self._prefixes.catch_up()
                now_ms = time.time() * 1000
                for message in list(self._mine.values()):  # what Redis missed while away
                    if message.deadline_ms > now_ms:
                        self._enqueue(message)
                    else:
                        del self._mine[message.node_id]
                if not self.connected:
                    _log.info("shared state: connected to Redis")
                self.connected, delay_s = True, 0.05
                while True:
                    item = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if item is not None and item.get("type") == "message":
                        self._receive(item["data"])
            except asyncio.CancelledError:
                raise
            except Exception as error:  # Redis is down: try again, more slowly each time
                self._stats.add("redis_errors")
                if self.connected:
                    _log.warning("shared state: lost Redis (%r); each process on its own", error)
                self.connected = False
                for node_id in list(self._waiting):  # no permit to wait for: trials decide
                    self._release(node_id)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()
            await asyncio.sleep(delay_s)
            delay_s = min(2.0, delay_s * 2)

    async def _resync(self) -> None:
        """The ejections in force, read back after a (re)connection."""
        found = 0
        async for key in self._client.scan_iter(match=f"{self._prefix()}:ejected:*", count=100):
            data = await self._client.get(key)
            if data is not None:
                self._receive(data)
            found += 1
            if found >= _MAX_KEYS:
                break

    def _receive(self, data: Any) -> None:
        self._stats.add("received")
        message = decode(data, self._key) if isinstance(data, bytes) else None
        if message is None:
            self._stats.add("refused")
            return
        if message.origin == self._origin:
            return
        if message.kind is Kind.ROUTES:
            if self._prefixes is not None:
                self._prefixes.merge(message.payload)
            return
        cluster = self._cluster
        if cluster is None or message.node_id not in cluster.balancer:
            return
        self._stats.add("applied")
        if message.kind is Kind.HEALTH:
            if self._lease is not None:
                self._lease.apply(message.node_id, message.deadline_ms)
        elif not self.share_ejections:
            return
        elif message.kind is Kind.EJECT:
            self._eject(message.node_id, message.deadline_ms / 1000 - time.time())
        elif message.kind is Kind.CLOSE:
            self._close(message.node_id)

    def _eject(self, node_id: str, wait_s: float) -> None:
        """Out until the sender's deadline, and after it until this process
        wins the node's trial permit (the sender holds it a ``trial_s``
        longer, to run its own trials first): trials are one process's at
        a time, cluster-wide."""
        if wait_s <= 0 or not self._may_eject(node_id):
            return
        self._hold(node_id, _HELD_S)
        self._schedule(node_id, wait_s)

    def _may_eject(self, node_id: str) -> bool:
        """Whether another process's word may take ``node_id`` out here: not
        when it would hold more than ``max_ejected`` of the nodes out of
        this process's rotation (at least one may always go), as Envoy's
        ``max_ejection_percent``. A process whose own loop stalled sees
        every node fail at once; its word must not take the service's
        whole fleet out everywhere."""
        assert self._cluster is not None
        manager = self._cluster.failover
        out = set(manager.taken_out())
        if node_id in out:
            return True
        if len(out) + 1 <= max(1.0, self.max_ejected * len(manager.balancer)):
            return True
        self._stats.add("ejections_capped")
        return False

    def _hold(self, node_id: str, seconds: float) -> None:
        assert self._cluster is not None
        with self._own():
            self._cluster.failover.breaker(node_id).open_for(seconds)

    def _schedule(self, node_id: str, after_s: float) -> None:
        assert self._loop is not None
        self._unwait(node_id)
        self._waiting[node_id] = self._loop.call_later(after_s, self._contend_soon, node_id)

    def _contend_soon(self, node_id: str) -> None:
        self._waiting.pop(node_id, None)
        self._spawn(self._contend(node_id))

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _contend(self, node_id: str) -> None:
        """Takes the trial permit, or waits another ``trial_s`` for it."""
        try:
            won = await asyncio.wait_for(
                self._client.set(
                    self._trial_key(node_id), self._origin, nx=True, px=int(self.trial_s * 1000)
                ),
                self.timeout_s,
            )
        except asyncio.CancelledError:
            raise
        except Exception:  # no Redis: this process judges the node alone
            self._stats.add("redis_errors")
            won = True
        if won:
            self._stats.add("trials_won")
            self._release(node_id)
        else:
            self._schedule(node_id, self.trial_s)

    def _release(self, node_id: str) -> None:
        """The hold ends: this process's breaker admits trials."""
        self._unwait(node_id)
        assert self._cluster is not None
        breaker = self._cluster.failover.breaker(node_id)
        if breaker.state == "open":
            with self._own():
                breaker.half_open()

    @contextlib.contextmanager
    def _own(self) -> Iterator[None]:
        """A change this state makes from a message: not to be told again."""
        self._applying.on = True
        try:
            yield
        finally:
            self._applying.on = False

    def _unwait(self, node_id: str) -> None:
        timer = self._waiting.pop(node_id, None)
        if timer is not None:
            timer.cancel()

    def _trial_key(self, node_id: str) -> str:
        return f"{self._prefix()}:trial:{node_id}"

    def _close(self, node_id: str) -> None:
        """Another process's trial passed: the node is back here too."""
        self._unwait(node_id)
        assert self._cluster is not None
        breaker = self._cluster.failover.breaker(node_id)
        if breaker.state in ("open", "half_open"):  # a forced state is an operator's
            with self._own():
                breaker.reset()
