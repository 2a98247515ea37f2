"""Prefix-aware routing in a simulated fleet: PrefixAware against the
routers LLM fleets use, on three workloads at two cache pressures, and a
server that dies and comes back cold.

    python benches/prefix_routing.py            # the full comparison (minutes)
    python benches/prefix_routing.py --small    # a fast, small one (the tests run it)

Cache pressure is the workload's reusable content over the cluster's cache:
0.5 (everything fits twice) and 2 (half of it fits). Figures: token-weighted
cache hit rate, time to first token p50/p99, goodput (requests per second
with TTFT under the target), load spread (requests of the busiest server
over the mean), router time per pick, and the entries the router's own
index holds at the end.
"""

from __future__ import annotations

import argparse
import json
import math
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
    Workload,
    prompt_bytes,
    simulate,
)
from langcluster.testing.workloads import GroupedUsers, MultiTurn, SharedPrefix
from prefix_policies import DynamoCost, LlmdPrefixLoad, Oracle, SglangCacheAware

SERVERS = 8
TTFT_TARGET_S = 1.0
ORACLE = "oracle"
OURS = "PrefixAware"


def as_text(request: Request) -> bytes:
    return prompt_bytes(request.blocks)


def first_256_tokens(request: Request) -> bytes:
    return prompt_bytes(request.blocks[:16])


OPTIONS: dict[str, Any] = {}


def policies(servers: int, model: ServerModel) -> dict[str, Callable[[], Any]]:
    """Fresh routers by name."""

    def ours() -> Any:
        return BalancerRouter(lc.PrefixAware(**{"seed": 1, **OPTIONS}), servers, as_text)

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
    }


@dataclass
class Case:
    name: str
    make: Callable[[int], Any]
    warmup_s: float


def cases(small: bool) -> list[Case]:
    if small:
        return [
            Case("shared-prefix", lambda s: SharedPrefix(40, 16, 8, rounds=2, seed=s), 2.0),
            Case("multi-turn", lambda s: MultiTurn(6, conversations=48, turns=3, seed=s), 2.0),
            Case("grouped-users", lambda s: GroupedUsers(20, 20, queries_per_user=2, seed=s), 2.0),
        ]
    return [
        Case("shared-prefix", lambda seed: SharedPrefix(60, rounds=3, seed=seed), 10.0),
        Case("multi-turn", lambda seed: MultiTurn(8, conversations=512, seed=seed), 10.0),
        Case("grouped-users", lambda seed: GroupedUsers(25, seed=seed), 10.0),
    ]


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


def model_for(workload: Any, pressure: float, servers: int) -> ServerModel:
    blocks = working_set_tokens(workload) / pressure / workload.block_tokens / servers
    return ServerModel(cache_blocks=max(1, int(blocks)))


def entries(router: Any) -> int:
    if isinstance(router, BalancerRouter):
        if isinstance(router.balancer, lc.PrefixAware):
            return int(router.balancer.prefix_stats()["blocks"])
        return 0
    return int(router.entries())


def row(policy: str, result: Result, router: Any) -> dict[str, Any]:
    return {
        "policy": policy,
        "hit_rate": result.hit_rate,
        "ttft_p50_s": result.ttft_p50_s,
        "ttft_p99_s": result.ttft_p99_s,
        "goodput": result.goodput(TTFT_TARGET_S),
        "spread": result.load_spread,
        "pick_us": result.pick_us,
        "entries": entries(router),
    }


def run(small: bool, only: set[str] | None, seeds: int) -> list[dict[str, Any]]:
    """Every policy on every case and pressure; figures are means over seeds."""
    table = []
    for case in cases(small):
        for pressure in (0.5, 2.0):
            model = model_for(case.make(0), pressure, SERVERS)
            for name, make in policies(SERVERS, model).items():
                if only and name not in only:
                    continue
                rows = []
                for seed in range(seeds):
                    workload: Workload = case.make(seed)
                    router = make()
                    result = simulate(
                        workload, router, servers=SERVERS, model=model, warmup_s=case.warmup_s
                    )
                    rows.append(row(name, result, router))
                mean = {k: statistics.fmean(r[k] for r in rows) for k in rows[0] if k != "policy"}
                table.append({"workload": case.name, "pressure": pressure, "policy": name, **mean})
                print(format_row(table[-1]), flush=True)
    return table


def format_row(r: dict[str, Any]) -> str:
    return (
        f"| {r['workload']} | {r['pressure']:g} | {r['policy']} | {100 * r['hit_rate']:.1f} "
        f"| {r['ttft_p50_s']:.3f} | {r['ttft_p99_s']:.3f} | {r['goodput']:.1f} "
        f"| {r['spread']:.2f} | {r['pick_us']:.1f} | {r['entries']} |"
    )


HEADER = (
    "| workload | pressure | policy | hit % | TTFT p50 s | TTFT p99 s | goodput/s "
    "| spread | µs/pick | index entries |\n|---|---|---|---|---|---|---|---|---|---|"
)


def verdicts(table: list[dict[str, Any]]) -> list[str]:
    """The goals, checked per workload and pressure."""
    out = []
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in table:
        groups.setdefault((r["workload"], r["pressure"]), []).append(r)
    for (workload, pressure), rows in groups.items():
        by = {r["policy"]: r for r in rows}
        if OURS not in by:
            continue
        ours = by[OURS]
        others = [r for r in rows if r["policy"] not in (OURS, ORACLE)]
        best_p99 = min(r["ttft_p99_s"] for r in others)
        best_hit = max(r["hit_rate"] for r in others)
        checks = [
            ("p99 <= best other", ours["ttft_p99_s"] <= best_p99 * 1.0001),
            ("hit >= best other - 1 pt", ours["hit_rate"] >= best_hit - 0.01),
            ("spread <= 1.3", ours["spread"] <= 1.3),
        ]
        if ORACLE in by:
            oracle = by[ORACLE]
            if oracle["ttft_p99_s"] <= 2 * best_p99:
                checks.append(
                    ("hit within 10% of oracle", ours["hit_rate"] >= 0.9 * oracle["hit_rate"])
                )
        text = ", ".join(f"{name}: {'yes' if ok else 'NO'}" for name, ok in checks)
        out.append(
            f"{workload} @ {pressure:g}: ours p99 {ours['ttft_p99_s']:.3f} s vs best other "
            f"{best_p99:.3f} s; hit {100 * ours['hit_rate']:.1f} % "
            f"vs {100 * best_hit:.1f} %; {text}"
        )
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
    case = cases(small)[0]
    probe = case.make(0)
    model = model_for(probe, 0.5, SERVERS)
    span = max(r.arrival_s for r in probe.arrivals())
    down, up = span / 3, 2 * span / 3
    lines = []
    for name, make in policies(SERVERS, model).items():
        if (only and name not in only) or name == ORACLE:
            continue
        router = make()
        result = simulate(
            case.make(0), router, servers=SERVERS, model=model, warmup_s=case.warmup_s,
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
    parser.add_argument("--seeds", type=int, default=5, help="runs per figure (means)")
    parser.add_argument("--option", action="append", default=[], help="PrefixAware NAME=VALUE")
    args = parser.parse_args()
    for option in args.option:
        name, _, value = option.partition("=")
        OPTIONS[name] = json.loads(value) if value[:1].isdigit() else value
    only = set(args.policy) if args.policy else None
    print(HEADER)
    table = run(args.small, only, args.seeds)
    print()
    for line in verdicts(table):
        print(line)
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
