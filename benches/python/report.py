"""Prints ns per pick for every case in one run, with ratios to the floor
(`next(itertools.cycle)`) and to the pure-Python twin, as a Markdown table.

    python benches/python/report.py [--number N] [--repeat R]

Each figure is the best of R repeats of N calls (the least disturbed run on
a noisy machine); ratios are taken within the same run.
"""

from __future__ import annotations

import argparse
import platform
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from cases import CASES

import langcluster


def ns_per_call(fn: object, args: tuple[object, ...], number: int, repeat: int) -> float:
    names = [f"a{i}" for i in range(len(args))]
    stmt = f"f({', '.join(names)})"
    env = {"f": fn, **dict(zip(names, args, strict=True))}
    best = min(timeit.repeat(stmt, globals=env, number=number, repeat=repeat))
    return best / number * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=7)
    opts = parser.parse_args()

    results: dict[tuple[str, str], float] = {}
    for case in CASES:
        fn, args = case.make()
        results[(case.group, case.contender)] = ns_per_call(fn, args, opts.number, opts.repeat)
    floor = results[("floor", "floor")]

    print(
        f"langcluster {langcluster.__version__}, CPython {platform.python_version()}, "
        f"{platform.machine()}; best of {opts.repeat} x {opts.number:,} calls"
    )
    print()
    print("| algorithm | contender | ns/pick | x floor | pure Python / langcluster |")
    print("|---|---|---:|---:|---:|")
    print(f"| floor: `next(itertools.cycle)` | | {floor:.1f} | 1.00 | |")
    for (group, contender), ns in results.items():
        if group == "floor":
            continue
        speedup = ""
        if contender == "langcluster" and (group, "pure-python") in results:
            speedup = f"{results[(group, 'pure-python')] / ns:.1f}x"
        print(f"| {group} | {contender} | {ns:.1f} | {ns / floor:.2f} | {speedup} |")


if __name__ == "__main__":
    main()
