"""The sweep that chose PrefixAware's defaults: each setting varied alone
around the defaults, on every workload and pressure of
``prefix_routing.py``, against the other routers' figures from a run of it.

    python benches/prefix_routing.py --seeds 2 --json table.json     # the others, once
    python benches/prefix_sweep.py table.json                         # minutes
    python benches/prefix_sweep.py table.json --base min_match=0.1 --only balance_abs

For each candidate it prints how many settings meet every goal (hit rate
at least the best other's minus half a point, TTFT p99 at most the best
other's, goodput within 5 % of the oracle's), the worst hit-rate margin,
the worst p99 over the best other's, and the mean of each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import prefix_routing as pr

GRID: dict[str, list[Any]] = {
    "min_match": [0.0, 0.1, 0.2, 0.3, 0.5],
    "prefill_weight": [0.0, 1.0, 2.0, 4.0, 8.0],
    "prefill_decay_s": [0.25, 0.5, 1.0, 2.0],
    "balance_abs": [4.0, 8.0, 16.0, 32.0],
    "balance_rel": [1.2, 1.5, 2.0],
}


def candidates() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{}]
    for name, values in GRID.items():
        out += [{name: v} for v in values]
    return out


def score(ours: list[dict[str, Any]], others: list[dict[str, Any]]) -> dict[str, float]:
    by_setting: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in others:
        by_setting.setdefault((r["servers"], r["workload"], r["pressure"]), []).append(r)
    met, margins, ratios = 0, [], []
    for r in ours:
        rows = by_setting[(r["servers"], r["workload"], r["pressure"])]
        rivals = [x for x in rows if x["policy"] not in (*pr.VARIANTS, pr.ORACLE)]
        oracle = next(x for x in rows if x["policy"] == pr.ORACLE)
        margin = r["hit_rate"] - max(x["hit_rate"] for x in rivals)
        ratio = r["ttft_p99_s"] / min(x["ttft_p99_s"] for x in rivals)
        good = r["goodput"] >= 0.95 * oracle["goodput"]
        met += margin >= -0.005 and ratio <= 1.0001 and good
        margins.append(margin)
        ratios.append(ratio)
    return {
        "met": met,
        "of": len(ours),
        "worst_margin": min(margins),
        "mean_margin": statistics.fmean(margins),
        "worst_ratio": max(ratios),
        "mean_ratio": statistics.fmean(ratios),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("table", type=Path, help="prefix_routing.py --json output")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--servers", type=int, default=8)
    parser.add_argument("--base", action="append", default=[], help="NAME=VALUE held for all")
    parser.add_argument("--only", action="append", help="sweep only these settings")
    args = parser.parse_args()
    base = {k: json.loads(v) for k, _, v in (b.partition("=") for b in args.base)}
    if args.only:
        for name in list(GRID):
            if name not in args.only:
                del GRID[name]
    others = [r for r in json.loads(args.table.read_text()) if r["servers"] == args.servers]
    print("| setting | settings meeting every goal | worst hit margin, pt | mean hit margin, pt "
          "| worst p99 / best other | mean p99 / best other |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for candidate in candidates():
        pr.OPTIONS.clear()
        pr.OPTIONS.update({**base, **candidate})
        ours = pr.run(pr.cases(False), (args.servers,), {pr.OURS}, args.seeds, quiet=True)
        s = score(ours, others)
        name = ", ".join(f"{k}={v}" for k, v in candidate.items()) or "base"
        print(
            f"| {name} | {s['met']} of {s['of']} | {100 * s['worst_margin']:+.1f} "
            f"| {100 * s['mean_margin']:+.1f} | {s['worst_ratio']:.2f} | {s['mean_ratio']:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
