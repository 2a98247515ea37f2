"""Prefix-aware routing in a simulated fleet: PrefixAware against the
routers LLM fleets use, on three workloads and three replayed traces, at
two cache pressures and 8 and 16 servers, and a server that dies and comes
back cold.

    python benches/prefix_routing.py                 # the full comparison (minutes)
    python benches/prefix_routing.py --small         # a fast, small one (the tests run it)
    python benches/prefix_routing.py --trace my.jsonl --servers 8   # your own traffic

Cache pressure is the workload's reusable content over the cluster's cache:
0.5 (everything fits twice) and 2 (half of it fits). Traces are JSON lines
in the Mooncake format (``langcluster.testing.traces``): the three here are
generated (seeded) conversation, agent and hot-template traffic. Figures:
token-weighted cache hit rate, time to first token p50/p99, goodput
(requests per second with TTFT under the target), load spread (requests of
the busiest server over the mean), router time per pick, and the entries
the router's own index holds at the end.

PrefixAware runs three ways: knowing each server's cache size (what
``langcluster.kv`` learns from vLLM or SGLang), fed the servers' KV events
(exact mode), and with neither (its defaults alone).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import langcluster as lc
from langcluster.testing.fleet import (
    BalancerRouter,
    Outage,
    Request,
    Result,
    ServerModel,
    SimClock,
    Workload,
    prompt_bytes,
    simulate,
)
from langcluster.testing.traces import TraceReplay, read_trace, synthesize
from langcluster.testing.workloads import GroupedUsers, MultiTurn, SharedPrefix
from prefix_policies import DynamoCost, LlmdPrefixLoad, Oracle, SglangCacheAware

SERVERS = (8, 16)
ORACLE = "oracle"
OURS = "PrefixAware"
EXACT = "PrefixAware exact"
BLIND = "PrefixAware blind"
REPLICAS = "PrefixAware x4"
EXACT_REPLICAS = "PrefixAware exact x4"
VARIANTS = (OURS, EXACT, BLIND, REPLICAS, EXACT_REPLICAS)


def as_text(request: Request) -> bytes:
    return prompt_bytes(request.blocks)


def first_256_tokens(request: Request) -> bytes:
    return prompt_bytes(request.blocks[:16])


OPTIONS: dict[str, Any] = {}


class Replicas:
    """Routers of one service that share nothing (worker processes without
    SharedState), each request dealt to one of them at random; the
    servers' KV events reach every one."""

    def __init__(self, routers: list[BalancerRouter], seed: int = 9) -> None:
        self.routers = routers
        self.rng = random.Random(seed)
        self.by_request: dict[int, BalancerRouter] = {}
        if hasattr(routers[0], "kv_events"):
            self.kv_events = self._kv_events

    def pick(self, request: Request, fleet: Any) -> int:
        router = self.rng.choice(self.routers)
        self.by_request[id(request)] = router
        return router.pick(request, fleet)

    def started(self, server: int, request: Request) -> None:
        self.by_request[id(request)].started(server, request)

    def finished(self, server: int, request: Request, latency_s: float | None) -> None:
        self.by_request.pop(id(request)).finished(server, request, latency_s)

    def set_available(self, server: int, up: bool) -> None:
        for router in self.routers:
            router.set_available(server, up)

    def _kv_events(self, server: int, events: Any) -> None:
        for router in self.routers:
            router.kv_events(server, events)

    def entries(self) -> int:
        return sum(entries(r) for r in self.routers)


def policies(servers: int, model: ServerModel) -> dict[str, Callable[[], Any]]:
    """Fresh routers by name."""

    def ours(*, capacity: bool = True, exact: bool = False, seed: int = 1) -> Any:
        clock = SimClock()
        known = {"node_blocks": model.cache_blocks} if capacity else {}
        options = {"seed": seed, "clock": clock, **known, **OPTIONS}
        balancer = lc.PrefixAware(**options)
        return BalancerRouter(balancer, servers, as_text, clock=clock, exact=exact)

    def replicas(exact: bool) -> Replicas:
        return Replicas([ours(exact=exact, seed=seed) for seed in range(1, 5)])

    return {
        "RoundRobin": lambda: BalancerRouter(lc.RoundRobin(), servers),
        "LeastConnections": lambda: BalancerRouter(lc.LeastConnections(), servers),
        "PowerOfTwoChoices": lambda: BalancerRouter(lc.PowerOfTwoChoices(), servers),
        "ConsistentHash(1.25)": lambda: BalancerRouter(
            lc.ConsistentHash(load_factor=1.25), servers, first_256_tokens
        ),
        "sglang 0.5/32/1.1": lambda: SglangCacheAware(servers, 0.5, 32, 1.1, 10_000, 30.0),
        "sglang 0.3/64/1.5": lambda: SglangCacheAware(servers, 0.3, 64, 1.5, 2**26, 60.0),
        "llm-d prefix+load": lambda: LlmdPrefixLoad(servers),
        "dynamo cost": lambda: DynamoCost(servers, model.cache_blocks),
        ORACLE: lambda: Oracle(servers),
        OURS: ours,
        EXACT: lambda: ours(exact=True),
        BLIND: lambda: ours(capacity=False),
        REPLICAS: lambda: replicas(False),
        EXACT_REPLICAS: lambda: replicas(True),
    }


@dataclass
class Case:
    """A workload made for a number of servers and a seed."""

    name: str
    make: Callable[[int, int], Any]
    warmup_s: float
    ttft_target_s: float = 1.0
    model: ServerModel = dataclasses.field(default_factory=ServerModel)


TRACE_MODEL = ServerModel(block_tokens=512)
# Sessions and their start rate per second for 8 servers (scaled with the
# servers): about two thirds of the fleet's prefill at round robin's hit rate.
TRACES = {"conversation": (2400, 8.0), "agent": (250, 1.0), "hot-template": (12000, 40.0)}


def trace_case(shape: str, small: bool) -> Case:
    sessions, rate = TRACES[shape]
    scale = 0.1 if small else 1.0

    def make(servers: int, seed: int) -> TraceReplay:
        k = servers / 8
        records = synthesize(
            shape, sessions=max(1, int(sessions * k * scale)), rate=rate * k, seed=seed
        )
        return TraceReplay(records)

    return Case(f"trace {shape}", make, 5.0 if small else 20.0, 2.0, TRACE_MODEL)


def cases(small: bool, traces: list[Path] | None = None) -> list[Case]:
    if traces:
        return [
            Case(f"trace {path.name}", lambda n, s, p=path: TraceReplay(read_trace(p)), 0.0, 2.0,
                 TRACE_MODEL)
            for path in traces
        ]  # fmt: skip
    # Rates and sizes per fleet of n servers (the figures of the docs are at 8).
    if small:
        made = [
            Case("shared-prefix", lambda n, s: SharedPrefix(5 * n, 16, 8, rounds=2, seed=s), 2.0),
            Case("multi-turn", lambda n, s: MultiTurn(0.75 * n, 6 * n, turns=3, seed=s), 2.0),
            Case("grouped-users",
                 lambda n, s: GroupedUsers(2.5 * n, 20, queries_per_user=2, seed=s), 2.0),
        ]  # fmt: skip
    else:
        made = [
            Case("shared-prefix",
                 lambda n, s: SharedPrefix(7.5 * n, 8 * n, rounds=3, seed=s), 10.0),
            Case("multi-turn", lambda n, s: MultiTurn(n, conversations=64 * n, seed=s), 10.0),
            Case("grouped-users",
                 lambda n, s: GroupedUsers(25 * n / 8, 150 * n // 8, seed=s), 10.0),
        ]  # fmt: skip
    return made + [trace_case(shape, small) for shape in TRACES]


def working_set_tokens(workload: Any) -> int:
    """The reusable content the caches compete for. For chats, the
    conversations live at once (each lasts about ``turns`` x (think + 1 s))."""
    if isinstance(workload, MultiTurn):
        live = workload.rate * workload.turns * (workload.think_s + 1.0)
        final = workload.system_tokens + workload.turns * (
            workload.user_tokens + workload.output_tokens
        )
        return int(min(workload.conversations, live) * final)
    return int(workload.distinct_prefix_tokens)


def model_for(case: Case, workload: Any, pressure: float, servers: int) -> ServerModel:
    blocks = working_set_tokens(workload) / pressure / workload.block_tokens / servers
    return dataclasses.replace(case.model, cache_blocks=max(1, int(blocks)))


def entries(router: Any) -> int:
    if isinstance(router, BalancerRouter):
        if isinstance(router.balancer, lc.PrefixAware):
            return int(router.balancer.prefix_stats()["blocks"])
        return 0
    return int(router.entries())


def row(policy: str, result: Result, router: Any, case: Case) -> dict[str, Any]:
    return {
        "policy": policy,
        "hit_rate": result.hit_rate,
        "ttft_p50_s": result.ttft_p50_s,
        "ttft_p99_s": result.ttft_p99_s,
        "goodput": result.goodput(case.ttft_target_s),
        "spread": result.load_spread,
        "pick_us": result.pick_us,
        "entries": entries(router),
    }


def run(
    chosen: list[Case],
    servers: tuple[int, ...],
    only: set[str] | None,
    seeds: int,
    *,
    quiet: bool = False,
) -> list[dict[str, Any]]:
    """Every policy on every case, pressure and fleet size; figures are
    means over seeds."""
    table = []
    for n in servers:
        for case in chosen:
            for pressure in (0.5, 2.0):
                model = model_for(case, case.make(n, 0), pressure, n)
                for name, make in policies(n, model).items():
                    if only and name not in only:
                        continue
                    rows = []
                    for seed in range(seeds):
                        workload: Workload = case.make(n, seed)
                        router = make()
                        result = simulate(
                            workload, router, servers=n, model=model, warmup_s=case.warmup_s
                        )
                        rows.append(row(name, result, router, case))
                    mean = {
                        k: statistics.fmean(r[k] for r in rows) for k in rows[0] if k != "policy"
                    }
                    table.append(
                        {"servers": n, "workload": case.name, "pressure": pressure,
                         "policy": name, **mean}
                    )  # fmt: skip
                    if not quiet:
                        print(format_row(table[-1]), flush=True)
    return table


def format_row(r: dict[str, Any]) -> str:
    return (
        f"| {r['servers']} | {r['workload']} | {r['pressure']:g} | {r['policy']} "
        f"| {100 * r['hit_rate']:.1f} "
        f"| {r['ttft_p50_s']:.3f} | {r['ttft_p99_s']:.3f} | {r['goodput']:.1f} "
        f"| {r['spread']:.2f} | {r['pick_us']:.1f} | {r['entries']} |"
    )


HEADER = (
    "| servers | workload | pressure | policy | hit % | TTFT p50 s | TTFT p99 s | goodput/s "
    "| spread | µs/pick | index entries |\n|---|---|---|---|---|---|---|---|---|---|---|"
)


def verdicts(table: list[dict[str, Any]]) -> list[str]:
    """The goals, checked per fleet size, workload and pressure: ours
    against the best of the routers that are not ours nor the oracle."""
    out = []
    groups: dict[tuple[int, str, float], list[dict[str, Any]]] = {}
    for r in table:
        groups.setdefault((r["servers"], r["workload"], r["pressure"]), []).append(r)
    met = total = 0
    for (servers, workload, pressure), rows in groups.items():
        by = {r["policy"]: r for r in rows}
        others = [r for r in rows if r["policy"] not in (*VARIANTS, ORACLE)]
        if OURS not in by or not others:
            continue
        ours = by[OURS]
        best_p99 = min(r["ttft_p99_s"] for r in others)
        best_hit = max(r["hit_rate"] for r in others)
        checks = [
            ("hit >= best other - 0.5 pt", ours["hit_rate"] >= best_hit - 0.005),
            ("p99 <= best other", ours["ttft_p99_s"] <= best_p99 * 1.0001),
        ]
        if ORACLE in by:
            good = by[ORACLE]["goodput"]
            checks.append(("goodput >= 95% of oracle", ours["goodput"] >= 0.95 * good))
        if pressure >= 2:
            for exact_name, approx_name, label in (
                (EXACT, OURS, "exact >= approx"),
                (EXACT_REPLICAS, REPLICAS, "x4: exact >= approx"),
            ):
                if exact_name in by and approx_name in by:
                    exact, approx = by[exact_name], by[approx_name]
                    checks.append(
                        (label, exact["hit_rate"] >= approx["hit_rate"] - 1e-9
                         and exact["ttft_p99_s"] <= approx["ttft_p99_s"] * 1.0001)
                    )  # fmt: skip
        met += all(ok for _, ok in checks)
        total += 1
        text = ", ".join(f"{name}: {'yes' if ok else 'NO'}" for name, ok in checks)
        out.append(
            f"{servers} servers, {workload} @ {pressure:g}: ours p99 {ours['ttft_p99_s']:.3f} s "
            f"vs best other {best_p99:.3f} s; hit {100 * ours['hit_rate']:.1f} % "
            f"vs {100 * best_hit:.1f} %; {text}"
        )
    out.append(f"every goal met in {met} of {total} settings")
    return out


def spiky(result: Result, steady_p99: float, start: float, end: float) -> int:
    """The longest run of consecutive 1-second windows in [start, end)
    whose p99 is over 2x the steady p99."""
    longest = run = 0
    last = None
    for at, rs in result.windows(1.0):
        if not start <= at < end:
            continue
        over = sorted(r.ttft_s for r in rs)[int(0.99 * len(rs))] > 2 * steady_p99
        run = (run + 1 if last == at - 1.0 else 1) if over else 0
        last = at
        longest = max(longest, run)
    return longest


def outage(small: bool, only: set[str] | None) -> list[str]:
    """Server 0 dies a third of the way in and comes back cold at two thirds."""
    case, n = cases(small)[0], SERVERS[0]
    probe = case.make(n, 0)
    model = model_for(case, probe, 0.5, n)
    span = max(r.arrival_s for r in probe.arrivals())
    down, up = span / 3, 2 * span / 3
    lines = []
    for name, make in policies(n, model).items():
        if (only and name not in only) or name == ORACLE:
            continue
        router = make()
        result = simulate(
            case.make(n, 0), router, servers=n, model=model, warmup_s=case.warmup_s,
            outages=[Outage(0, down, up)],
        )  # fmt: skip
        steady = [r.ttft_s for r in result.measured() if r.arrival_s < down]
        steady_p99 = sorted(steady)[int(0.99 * len(steady))] if steady else math.nan

        back = [r for r in result.measured() if r.server == 0 and r.arrival_s >= up]
        refill = (
            statistics.fmean(r.hit_blocks / len(r.blocks) for r in back[len(back) // 2 :])
            if len(back) >= 2
            else math.nan
        )
        lines.append(
            f"| {name} | {steady_p99:.3f} | {spiky(result, steady_p99, down, up)} "
            f"| {spiky(result, steady_p99, up, math.inf)} "
            f"| {len(back)} | {100 * refill:.1f} | {100 * result.hit_rate:.1f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="a small, fast configuration")
    parser.add_argument("--json", type=Path, help="also write the table here")
    parser.add_argument("--policy", action="append", help="only these policies (repeatable)")
    parser.add_argument("--seeds", type=int, default=3, help="runs per figure (means)")
    parser.add_argument("--option", action="append", default=[], help="PrefixAware NAME=VALUE")
    parser.add_argument("--servers", type=int, action="append", help="fleet sizes (8 and 16)")
    parser.add_argument("--trace", type=Path, action="append", help="replay this JSON-lines trace")
    parser.add_argument("--case", action="append", help="only these workloads (repeatable)")
    parser.add_argument("--no-outage", action="store_true", help="skip the outage run")
    args = parser.parse_args()
    for option in args.option:
        name, _, value = option.partition("=")
        OPTIONS[name] = json.loads(value) if value[:1].isdigit() else value
    only = set(args.policy) if args.policy else None
    chosen = [c for c in cases(args.small, args.trace) if not args.case or c.name in args.case]
    servers = tuple(args.servers) if args.servers else SERVERS[:1] if args.small else SERVERS
    print(HEADER)
    table = run(chosen, servers, only, args.seeds)
    print()
    for line in verdicts(table):
        print(line)
    if args.no_outage or args.trace:
        return
    print("\nServer 0 down for the middle third (shared-prefix, pressure 0.5):\n")
    print(
        "| policy | steady p99 s | longest spike over 2x steady p99 while down, s "
        "| ... after it is back, s | requests to server 0 after "
        "| its hit % (second half) | hit % overall |"
    )
    print("|---|---|---|---|---|---|---|")
    for line in outage(args.small, only):
        print(line)
    if args.json:
        args.json.write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
