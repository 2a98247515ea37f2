"""``python -m langcluster demo``: an LLM service as it runs in production,
on embedded defaults.

Five OpenAI-compatible simulated model servers on loopback, each with a
prefix (KV) cache that makes a cached prompt cheaper to start; several
worker processes, each with its own cluster (prefix-aware routing, health
checks, breakers, failover) and the real OpenAI SDK on the cluster's httpx
transport; in front, a load balancer that deals multi-turn chats to the
workers at random, turn by turn. With ``--redis URL`` the workers share
state (ejections, one health checker, the prefix index); without it they
share nothing, and the demo says so. Mid-run one server is killed and
another made slow, then both recover. The live view shows, per node, the
requests, the cached-token rate, the time to first token, health and
breakers across the workers; the summary compares the run with what round
robin and one prefix-aware router give on the same workload in the fleet
simulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import multiprocessing
import random
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from langcluster.cli.demo_view import Run, render, report, summary
from langcluster.cli.demo_worker import SERVICE, WorkerSettings, run
from langcluster.testing import SimulatedServer
from langcluster.testing.fleet import (
    BalancerRouter,
    Outage,
    Request,
    ServerModel,
    SimClock,
    prompt_text,
    simulate,
)
from langcluster.testing.workloads import MultiTurn

# (id, time to first token s, error rate): a mix of fast and slower servers.
SERVERS = [
    ("gpu-0", 0.020, 0.00),
    ("gpu-1", 0.030, 0.002),
    ("gpu-2", 0.025, 0.00),
    ("gpu-3", 0.040, 0.005),
    ("gpu-4", 0.060, 0.002),
]
# Each server: a prefill costs this per prompt token not in its cache, which
# holds this many 16-token blocks (about a fifth of what the chats in flight
# need: round robin makes every server hold every chat).
PREFILL_PER_TOKEN_S = 0.00004
DECODE_PER_TOKEN_S = 0.002
CACHE_BLOCKS = 512
BLOCK_TOKENS = 16
MAX_TOKENS = 16
SLOTS = 8  # requests a server runs at once; the rest wait


class DemoError(Exception):
    """The demo could not run (a worker could not start)."""


def workload(duration_s: float, seed: int) -> MultiTurn:
    """Chats of six turns starting at 12 a second: a 256-token system
    prompt shared by all, each turn adding an answer and a 128-token
    message, the next turn half a second (on average) after the answer."""
    return MultiTurn(
        rate=12.0,
        conversations=int(12 * duration_s) + 1,
        turns=6,
        system_tokens=256,
        user_tokens=128,
        output_tokens=MAX_TOKENS,
        think_s=0.5,
        seed=seed,
        block_tokens=BLOCK_TOKENS,
    )


def simulated(duration_s: float, seed: int) -> dict[str, dict[str, float]]:
    """Round robin and one PrefixAware router on the same workload and the
    same outage, in the fleet simulator."""
    import langcluster as lc

    model = ServerModel(
        slots=SLOTS,
        cache_blocks=CACHE_BLOCKS,
        block_tokens=BLOCK_TOKENS,
        prefill_base_s=sum(s[1] for s in SERVERS) / len(SERVERS),
        prefill_per_token_s=PREFILL_PER_TOKEN_S,
        decode_per_token_s=DECODE_PER_TOKEN_S,
    )
    outage = [Outage(1, 0.25 * duration_s, 0.65 * duration_s)]

    def text(request: Request) -> bytes:
        return prompt_text(request.blocks).encode()

    clock = SimClock()  # the prefill work PrefixAware counts fades in simulated time
    routers = {
        "round_robin": BalancerRouter(lc.RoundRobin(), len(SERVERS)),
        "prefix_aware": BalancerRouter(
            lc.PrefixAware(seed=seed, clock=clock, node_blocks=CACHE_BLOCKS),
            len(SERVERS), text, clock=clock,
        ),
    }  # fmt: skip
    out = {}
    for name, router in routers.items():
        result = simulate(
            workload(duration_s, seed), router, servers=len(SERVERS), model=model, outages=outage
        )
        out[name] = {
            "token_hit_rate": round(result.hit_rate, 3),
            "ttft_p50_ms": round(result.ttft_p50_s * 1000, 1),
            "ttft_p99_ms": round(result.ttft_p99_s * 1000, 1),
        }
    return out


async def main(
    *,
    duration_s: float = 12.0,
    live: bool = True,
    redis_url: str | None = None,
    etcd_url: str | None = None,
    workers: int = 3,
    seed: int = 7,
    quiet: bool = False,
    metrics_port: int | None = None,
    stall_s: float | None = None,
) -> dict[str, Any]:
    servers = {
        name: SimulatedServer(
            name,
            latency_s=latency,
            error_rate=errors,
            seed=seed + i,
            cache_blocks=CACHE_BLOCKS,
            block_tokens=BLOCK_TOKENS,
            max_running=SLOTS,
            prefill_per_token_s=PREFILL_PER_TOKEN_S,
            decode_per_token_s=DECODE_PER_TOKEN_S,
        )
        for i, (name, latency, errors) in enumerate(SERVERS)
    }
    for server in servers.values():
        await server.start()
    announcer = None
    if etcd_url:
        from langcluster.discovery import EtcdDiscovery

        announcer = EtcdDiscovery(SERVICE, endpoints=[etcd_url])
        for server in servers.values():
            await announcer.register(server.node())
    loop = asyncio.get_running_loop()
    sim = loop.run_in_executor(None, simulated, duration_s, seed)
    context = multiprocessing.get_context("spawn")
    outbox = context.Queue()
    inboxes = [context.Queue() for _ in range(workers)]
    nodes = [(name, server.port) for name, server in servers.items()]
    procs = [
        context.Process(
            target=run,
            args=(
                WorkerSettings(
                    w, nodes, redis_url, etcd_url, metrics_port if w == 0 else None, MAX_TOKENS
                ),
                inboxes[w],
                outbox,
            ),
            daemon=True,
        )
        for w in range(workers)
    ]
    for proc in procs:
        proc.start()
    run_ = Run(workers=workers, sharing=redis_url is not None)
    flaky = [f"{name} {rate:.1%}" for name, _, rate in SERVERS if rate]
    told = (
        f"servers answer 500 to a few requests on purpose ({', '.join(flaky)}); "
        "the transport tries those again on another node"
    )
    run_.note(told)
    if not live and not quiet:
        print(told, flush=True)
    ready: asyncio.Queue[int] = asyncio.Queue()
    ended: asyncio.Queue[int] = asyncio.Queue()
    shape = workload(duration_s, seed)
    deal = random.Random(seed)
    waiting: dict[int, tuple[Request, float]] = {}
    ids = itertools.count()
    system_blocks = shape.system_tokens // BLOCK_TOKENS

    def dispatch(request: Request) -> None:
        rid = next(ids)
        waiting[rid] = (request, loop.time())
        run_.requests += 1
        system, user = request.blocks[:system_blocks], request.blocks[system_blocks:]
        inboxes[deal.randrange(workers)].put((rid, prompt_text(system), prompt_text(user)))

    def handle(message: tuple[Any, ...]) -> None:
        kind, worker = message[0], message[1]
        if kind in ("ready", "failed"):
            ready.put_nowait(worker)
            if kind == "failed":
                run_.failures.append(f"worker {worker}: {message[2]}")
        elif kind == "stats":
            run_.views[worker] = message[2]
            run_.sample(worker, message[2])
        elif kind == "end":
            run_.views[worker] = message[2]
            ended.put_nowait(worker)
        elif kind == "done":
            request, dealt = waiting.pop(message[2])
            run_.record(message[3])
            run_.answered(worker, dealt - t0)
            follow = shape.follow_up(request, loop.time() - t0)
            if follow is not None and follow.arrival_s < duration_s:
                loop.call_at(t0 + follow.arrival_s, dispatch, follow)

    def read() -> None:  # a thread: the queue blocks
        while True:
            message = outbox.get()
            if message is None:
                return
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(handle, message)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    result: dict[str, Any] = {}
    try:
        for _ in procs:
            await asyncio.wait_for(ready.get(), 60)
            if run_.failures:
                raise DemoError(run_.failures[0])
        t0 = loop.time()
        run_.started = time.monotonic()
        arrivals = iter(shape.arrivals())

        def arrive(request: Request) -> None:
            dispatch(request)
            after = next(arrivals, None)
            if after is not None and after.arrival_s < duration_s:
                loop.call_at(t0 + after.arrival_s, arrive, after)

        first = next(arrivals)
        loop.call_at(t0 + first.arrival_s, arrive, first)
        chaos_task = asyncio.create_task(chaos(servers, run_, t0, duration_s, live, quiet))
        if stall_s:

            def stall() -> None:
                run_.stalled = (time.monotonic() - run_.started, stall_s)
                run_.note(f"[bold magenta]stall[/]: worker 0's loop blocked for {stall_s:g} s")
                inboxes[0].put(("stall", stall_s))

            loop.call_at(t0 + 0.5 * duration_s, stall)
        await show(run_, t0 + duration_s, live, quiet)
        await chaos_task
        # The last answers, then each worker's last view.
        deadline = loop.time() + 10
        while waiting and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for inbox in inboxes:
            inbox.put(None)
        gone: set[int] = set()
        end_by = loop.time() + 30
        while len(gone) < len(procs) and loop.time() < end_by:
            with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                gone.add(await asyncio.wait_for(ended.get(), end_by - loop.time()))
        run_.unfinished = sorted(set(range(workers)) - gone)
        run_.lost = len(waiting)
        result = summary(run_, time.monotonic() - run_.started, await sim)
    finally:
        outbox.put(None)
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
        if announcer is not None:
            for name in servers:
                await announcer.deregister(name)
            await announcer.close()
        for server in servers.values():
            await server.kill()
    return result


async def chaos(
    servers: dict[str, SimulatedServer], run_: Run, t0: float, duration_s: float,
    live: bool, quiet: bool,
) -> None:  # fmt: skip
    def slow(name: str, latency: float | None) -> Callable[[], Awaitable[None]]:
        async def act() -> None:
            server = servers[name]
            base = {n: lat for n, lat, _ in SERVERS}[name]
            server.latency_s = latency if latency is not None else base
            server.health_latency_s = latency or 0.0

        return act

    async def restart() -> None:
        servers["gpu-1"].cache.blocks.clear()
        await servers["gpu-1"].start()

    steps: list[tuple[float, str, Callable[[], Awaitable[None]]]] = [
        (0.25, "gpu-1 is killed", servers["gpu-1"].kill),
        (0.40, "gpu-3 turns slow (600 ms)", slow("gpu-3", 0.6)),
        (0.65, "gpu-1 restarts, its cache cold", restart),
        (0.75, "gpu-3 is fast again", slow("gpu-3", None)),
    ]
    loop = asyncio.get_running_loop()
    for at, text, action in steps:
        await asyncio.sleep(max(0.0, t0 + at * duration_s - loop.time()))
        run_.note(f"[bold magenta]chaos[/]: {text}")
        if not live and not quiet:
            print(f"{time.monotonic() - run_.started:5.1f}s  chaos: {text}", flush=True)
        await action()


async def show(run_: Run, stop_at: float, live: bool, quiet: bool) -> None:
    loop = asyncio.get_running_loop()
    if live:
        from rich.live import Live

        with Live(render(run_, "langcluster demo"), refresh_per_second=8) as view:
            while loop.time() < stop_at:
                await asyncio.sleep(0.125)
                view.update(render(run_, "langcluster demo"))
        return
    next_line = loop.time() + 1.0
    while loop.time() < stop_at:
        await asyncio.sleep(0.05)
        if not quiet and loop.time() >= next_line:
            next_line += 1.0
            print(run_.progress(), flush=True)


def cli(args: Any) -> int:
    live = not (args.no_live or args.json)
    if live:
        try:
            import rich  # noqa: F401
        except ImportError:
            print("(rich is not installed: pip install 'langcluster[demo]'; plain logs instead)")
            live = False
    try:
        import openai  # noqa: F401
    except ImportError:
        print("the demo's workers call the servers through the OpenAI SDK: "
              "pip install 'langcluster[demo]'")  # fmt: skip
        return 2
    if not args.json:
        print("workers share state through Redis" if args.redis else
              "embedded mode: the workers share nothing (give --redis URL to share "
              "ejections, health checks and the prefix index)", flush=True)  # fmt: skip
    try:
        result = asyncio.run(
            main(
                duration_s=args.duration,
                live=live,
                redis_url=args.redis,
                etcd_url=args.etcd,
                workers=args.workers,
                seed=args.seed,
                quiet=args.json,
                metrics_port=args.metrics_port,
                stall_s=args.stall_s,
            )
        )
    except DemoError as error:
        print(f"the demo could not run: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(report(result))
    return 0
